"""Parameter counts, names and logical axes of the OFA network (no memory used).

The reference counts come from shared/docs/ofa_architecture.md §1: the tiny
count is what modelscope's OFAModel reports when instantiated (its
`parameters()`, so BatchNorm running statistics and index buffers are not
parameters); the others are the README sizes to the rounding of the table.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from ofa_jax.model import config as config_lib
from ofa_jax.model import transformer

# name -> (reference count, absolute tolerance given by the table's rounding)
_REFERENCE = {
    "tiny": (33_488_336, 0),
    "medium": (92.9e6, 0.05e6),
    "base": (182.2e6, 0.05e6),
    "large": (473.0e6, 0.05e6),
    "huge": (929.5e6, 0.05e6),
}


def _abstract_variables(cfg, image_size=32):
  batch = transformer.dummy_batch(cfg, 1, 8, 8, 1, image_size)
  return jax.eval_shape(
      lambda: transformer.init_variables(cfg, jax.random.key(0), batch))


@pytest.mark.parametrize("name", ["tiny", "medium", "base"])
def test_parameter_count_matches_reference(name):
  count = transformer.count_params(
      _abstract_variables(config_lib.get_config(name)))
  expected, tol = _REFERENCE[name]
  assert abs(count - expected) <= tol, (name, count)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["large", "huge"])
def test_parameter_count_matches_reference_big(name):
  count = transformer.count_params(
      _abstract_variables(config_lib.get_config(name)))
  expected, tol = _REFERENCE[name]
  assert abs(count - expected) <= tol, (name, count)


def test_tiny_breakdown_matches_ofa_components():
  """The ResNet-50 stages 1-3 are 8.54M and the tied embedding 59457×256."""
  variables = _abstract_variables(config_lib.get_config("tiny"))
  params = nn.unbox(variables["params"])
  resnet = params["encoder"]["images"]["embed_images"]
  n_resnet = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(resnet))
  assert round(n_resnet / 1e6, 2) == 8.54
  assert params["embed_tokens"].shape == (59457, 256)
  # BatchNorm statistics are state, not parameters.
  stats = variables["batch_stats"]["encoder"]["images"]["embed_images"]
  assert set(stats["bn1"]) == {"mean", "var"}


def test_parameter_names_follow_ofa_modules():
  """Key paths the checkpoint converter maps (one module per torch module)."""
  cfg = config_lib.get_config("tiny", encoder_layers=2, decoder_layers=2)
  flat = flatten_dict(nn.unbox(_abstract_variables(cfg)["params"]), sep="/")
  h, d, f = cfg.attention_heads, cfg.d_model, cfg.ffn_dim
  expected = {
      "embed_tokens": (cfg.vocab_size, d),
      "encoder/type_embedding": (2, d),
      "encoder/embed_positions": (1026, d),
      "encoder/pos_q_linear/kernel": (d, d),
      "encoder/images/embed_images/conv1/kernel": (7, 7, 3, 64),
      "encoder/images/embed_images/layer1_0/downsample_conv/kernel":
          (1, 1, 64, 256),
      "encoder/images/embed_images/layer3_5/bn3/scale": (1024,),
      "encoder/images/image_proj/kernel": (1024, d),
      "encoder/images/embed_image_positions": (1765, d),
      "encoder/images/patch_layernorm_embedding/scale": (d,),
      "encoder/layers_1/self_attn/c_attn": (h,),
      "encoder/layers_1/self_attn_mid_layer_norm/scale": (d,),
      "encoder/layers_1/ffn_layer_norm/scale": (f,),
      "encoder/layers_1/token_rel_pos_table": (511, h),
      "encoder/layers_1/image_rel_pos_table": (6892, h),
      "encoder/layer_norm/scale": (d,),
      "decoder/code_layernorm_embedding/scale": (d,),
      "decoder/embed_image_positions": (1765, d),
      "decoder/cross_pos_k_linear/kernel": (d, d),
      "decoder/layers_0/cross_attn/out_proj/kernel": (d, d),
      "decoder/layers_0/cross_attn_mid_layer_norm/bias": (d,),
      "decoder/layers_0/fc1/kernel": (d, f),
      "decoder/layers_1/image_rel_pos_table": (6892, h),
  }
  for key, shape in expected.items():
    assert key in flat, key
    assert tuple(flat[key].shape) == shape, (key, flat[key].shape)
  assert not any("output_projection" in k for k in flat)  # tied to embed_tokens


def test_every_parameter_has_logical_axes():
  cfg = config_lib.get_config("demo", vocab_size=300)
  variables = _abstract_variables(cfg)
  leaves = jax.tree.leaves(
      variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim, leaf.names
    assert all(isinstance(n, str) for n in leaf.names), leaf.names
  specs = flatten_dict(nn.get_partition_spec(variables["params"]), sep="/")
  assert tuple(specs["embed_tokens"]) == ("vocab", "embed")
  assert tuple(specs["encoder/layers_0/fc1/kernel"]) == ("embed", "mlp")
  assert tuple(specs["encoder/layers_0/self_attn/out_proj/kernel"]) == (
      "joined_kv", "embed")
  assert tuple(specs["decoder/layers_0/token_rel_pos_table"]) == (
      "relpos_buckets", "heads")


def test_get_config_rejects_bad_values():
  with pytest.raises(ValueError, match="Unknown OFA preset"):
    config_lib.get_config("gigantic")
  with pytest.raises(ValueError, match="Unknown OFAConfig field"):
    config_lib.get_config("tiny", d_modle=3)
  with pytest.raises(ValueError, match="not divisible"):
    config_lib.get_config("tiny", attention_heads=3)
  with pytest.raises(ValueError, match="dtype"):
    config_lib.get_config("tiny", dtype="float16")
  cfg = config_lib.get_config("base", dtype="bfloat16", resnet_layers=[1, 1, 1])
  assert cfg.resnet_layers == (1, 1, 1) and hash(cfg)


def test_ordered_init_makes_bins_and_patch_positions_smooth():
  cfg = config_lib.get_config("demo", vocab_size=300, num_bins=64, d_model=64,
                              ffn_dim=128, encoder_layers=1, decoder_layers=1,
                              ordered_init=True)
  batch = transformer.dummy_batch(cfg, 1, 8, 8, 1, 32)
  params = nn.meta.unbox(transformer.init_variables(
      cfg, jax.random.key(0), batch))["params"]
  emb = np.asarray(params["embed_tokens"])
  bins = emb[-64:]
  cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
  near = np.mean([cos(bins[k], bins[k + 1]) for k in range(63)])
  far = np.mean([cos(bins[k], bins[k + 32]) for k in range(32)])
  assert near > 0.95 and far < 0.5, (near, far)
  np.testing.assert_allclose(np.sqrt(np.mean(bins ** 2)), cfg.init_std, rtol=0.2)
  text = emb[4:200]  # the text rows stay i.i.d. normal, the pad row zero
  assert abs(np.mean([cos(text[k], text[k + 1]) for k in range(100)])) < 0.1
  assert not emb[cfg.pad_id].any()
  grid = cfg.image_bucket_size
  for table in (params["encoder"]["images"]["embed_image_positions"],
                params["decoder"]["embed_image_positions"]):
    table = np.asarray(table)
    at = lambda r, c: table[1 + c + r * grid]  # noqa: E731
    # Each feature follows the row or the column: neighbours share about half
    # of it exactly and the rest nearly (i.i.d. rows would give cos ~ 0).
    right = np.mean([cos(at(r, c), at(r, c + 1)) for r in range(4) for c in range(4)])
    down = np.mean([cos(at(r, c), at(r + 1, c)) for r in range(4) for c in range(4)])
    far = np.mean([cos(at(r, c), at(r + 6, c + 6)) for r in range(4) for c in range(4)])
    assert right > 0.45 and down > 0.45 and far < min(right, down) - 0.2, (
        right, down, far)
  # The text position table is OFA's normal init either way.
  pos = np.asarray(params["decoder"]["embed_positions"])
  assert abs(np.mean([cos(pos[k], pos[k + 1]) for k in range(50)])) < 0.1
  with pytest.raises(ValueError, match="ordered_init needs"):
    config_lib.get_config("demo", vocab_size=300, num_bins=0, ordered_init=True)
