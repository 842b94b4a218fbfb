"""Checkpoint conversion: naming, errors that name the key, round trips, orbax, the tool.

The parity with OFA's PyTorch network (which also proves the layout changes) is
in test_parity_ofa.py; here everything runs without torch unless marked.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ofa_jax import checkpoint_conversion as cc
from ofa_jax import checkpoint_conversion_names as names
from ofa_jax.checkpoint_conversion_names import ConversionError

# A few real key pairs (OFA-Sys/OFA unify_transformer_layer.py vs modelscope).
FAIRSEQ_HF_PAIRS = (
    ("encoder.layers.0.attn_ln.weight",
     "encoder.layers.0.self_attn_mid_layer_norm.weight"),
    ("encoder.layers.3.ffn_layernorm.bias", "encoder.layers.3.ffn_layer_norm.bias"),
    ("decoder.layers.1.self_attn_ln.bias",
     "decoder.layers.1.self_attn_mid_layer_norm.bias"),
    ("decoder.layers.1.cross_attn_ln.weight",
     "decoder.layers.1.cross_attn_mid_layer_norm.weight"),
    ("decoder.layers.2.encoder_attn.k_proj.weight",
     "decoder.layers.2.cross_attn.k_proj.weight"),
    ("decoder.layers.2.encoder_attn.c_attn", "decoder.layers.2.cross_attn.c_attn"),
    ("decoder.layers.0.encoder_attn_layer_norm.weight",
     "decoder.layers.0.cross_attn_layer_norm.weight"),
    ("decoder.layers.0.ffn_layernorm.weight", "decoder.layers.0.ffn_layer_norm.weight"),
    # Unchanged names.
    ("encoder.layers.0.self_attn.q_proj.weight",
     "encoder.layers.0.self_attn.q_proj.weight"),
    ("encoder.embed_images.layer1.0.downsample.1.running_var",
     "encoder.embed_images.layer1.0.downsample.1.running_var"),
    ("decoder.code_layernorm_embedding.bias", "decoder.code_layernorm_embedding.bias"),
)


@pytest.mark.parametrize("fairseq_key,hf_key", FAIRSEQ_HF_PAIRS)
def test_fairseq_hf_renames_both_ways(fairseq_key, hf_key):
  assert names.fairseq_to_hf_name(fairseq_key) == hf_key
  assert names.hf_to_fairseq_name(hf_key) == fairseq_key


def test_detect_naming():
  assert names.detect_naming(["encoder.layers.0.attn_ln.weight"]) == names.FAIRSEQ
  assert names.detect_naming(["decoder.version"]) == names.FAIRSEQ
  assert names.detect_naming(
      ["decoder.layers.0.cross_attn.q_proj.weight"]) == names.HF
  with pytest.raises(ConversionError, match="attn_ln"):
    names.detect_naming(["encoder.layers.0.attn_ln.weight",
                         "decoder.layers.0.cross_attn.q_proj.weight"])


def _emb(seed=0, shape=(7, 3)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_canonicalize_strips_prefix_drops_buffers_and_merges_tied_embedding():
  emb = _emb()
  sd = {
      "model.encoder.embed_tokens.weight": emb,
      "model.decoder.embed_tokens.weight": emb.copy(),
      "model.decoder.output_projection.weight": emb.copy(),
      "model.encoder.version": np.array([3.0]),
      "model.decoder.image_position_idx": np.arange(4),
      "model.encoder.token_rp_bucket": np.zeros((4, 4), np.int64),
      "model.encoder.embed_images.bn1.num_batches_tracked": np.array(0),
      "model.encoder.layers.0.attn_ln.weight": np.ones(3, np.float32),
  }
  canonical, naming = names.canonicalize_state_dict(sd)
  assert naming == names.FAIRSEQ
  assert sorted(canonical) == ["encoder.embed_tokens.weight",
                               "encoder.layers.0.self_attn_mid_layer_norm.weight"]
  np.testing.assert_array_equal(canonical["encoder.embed_tokens.weight"], emb)


def test_canonicalize_accepts_embedding_under_decoder_name_only():
  emb = _emb(1)
  canonical, _ = names.canonicalize_state_dict(
      {"decoder.output_projection.weight": emb})
  np.testing.assert_array_equal(canonical[names.SHARED_EMBEDDING], emb)


def test_untied_embeddings_are_an_error_naming_the_key():
  with pytest.raises(ConversionError, match="decoder.output_projection.weight"):
    names.canonicalize_state_dict({
        "encoder.embed_tokens.weight": _emb(0),
        "decoder.output_projection.weight": _emb(1),
    })


def test_old_fairseq_in_proj_is_split_into_q_k_v():
  w = _emb(2, (12, 4))
  b = _emb(3, (12,))
  canonical, _ = names.canonicalize_state_dict({
      "encoder.layers.0.self_attn.in_proj_weight": w,
      "encoder.layers.0.self_attn.in_proj_bias": b,
  })
  for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
    np.testing.assert_array_equal(
        canonical[f"encoder.layers.0.self_attn.{part}.weight"], w[4 * i:4 * i + 4])
    np.testing.assert_array_equal(
        canonical[f"encoder.layers.0.self_attn.{part}.bias"], b[4 * i:4 * i + 4])


def test_user_ignore_patterns_drop_keys():
  canonical, _ = names.canonicalize_state_dict(
      {"classification_heads.snli.dense.weight": _emb(),
       "encoder.layer_norm.weight": np.ones(3, np.float32)},
      ignore_patterns=[r"^classification_heads\."])
  assert list(canonical) == ["encoder.layer_norm.weight"]


def test_to_naming_writes_tied_aliases_and_fairseq_names():
  emb = _emb()
  sd = names.to_naming({names.SHARED_EMBEDDING: emb,
                        "decoder.layers.0.cross_attn.q_proj.bias": emb[0]},
                       names.FAIRSEQ)
  assert set(sd) == set(names.SHARED_EMBEDDING_ALIASES) | {
      "decoder.layers.0.encoder_attn.q_proj.bias"}
  with pytest.raises(ValueError, match="naming"):
    names.to_naming({}, "onnx")


@pytest.mark.parametrize("collection,path,key", [
    ("params", ("encoder", "layers_0", "self_attn", "q_proj", "kernel"),
     "encoder.layers.0.self_attn.q_proj.weight"),
    ("params", ("encoder", "layer_norm", "scale"), "encoder.layer_norm.weight"),
    ("batch_stats", ("encoder", "embed_images", "layer2_1", "bn3", "var"),
     "encoder.embed_images.layer2.1.bn3.running_var"),
])
def test_flax_path_to_torch_key(collection, path, key):
  assert cc.flax_path_to_torch_key(collection, path) == key


def test_layout_changes_are_inverse():
  rng = np.random.default_rng(0)
  for shape in [(5, 3), (8, 3, 7, 7), (11,)]:
    x = rng.normal(size=shape)
    y = cc._to_flax_layout(x, "kernel")  # pylint: disable=protected-access
    np.testing.assert_array_equal(
        cc._to_torch_layout(y, "kernel"), x)  # pylint: disable=protected-access
  conv = rng.normal(size=(8, 3, 7, 5))  # O, I, H, W
  assert cc._to_flax_layout(conv, "kernel").shape == (7, 5, 3, 8)  # pylint: disable=protected-access
