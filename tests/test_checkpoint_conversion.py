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

try:
  from tests.ofa_reference import load_tool  # pylint: disable=g-import-not-at-top
except ImportError:  # run with tests/ itself on sys.path
  from ofa_reference import load_tool  # pylint: disable=g-import-not-at-top

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


# ---------------------------------------------------------------------------
# Against the real ofa_jax variable tree (no torch): a small `demo` model.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
  """(config, abstract variables, random concrete variables) of a demo model."""
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = config_lib.get_config("demo", vocab_size=64)
  abstract = cc.abstract_variables(config)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(s.dtype), abstract)
  return config, abstract, variables


def _assert_trees_equal(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert flat_a.keys() == flat_b.keys()
  for path, value in flat_a.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[path]),
                                  err_msg=str(path))


def _padded(variables, rows):
  """The variables with zero embedding rows up to `rows` (the tool's padding)."""
  emb = variables["params"]["embed_tokens"]
  pad = np.zeros((rows - emb.shape[0], emb.shape[1]), emb.dtype)
  params = {**variables["params"], "embed_tokens": np.concatenate([emb, pad])}
  return {**variables, "params": params}


def test_every_variable_has_a_distinct_torch_key(demo):
  _, abstract, _ = demo
  sd = cc.to_state_dict(abstract, names.HF, with_tied_aliases=False)
  n_leaves = sum(len(cc._flatten(abstract[c])) for c in abstract)  # pylint: disable=protected-access
  assert len(sd) == n_leaves
  # The contract of ofa_jax/model's docstrings, spot-checked.
  for key in ("encoder.embed_tokens.weight", "encoder.type_embedding.weight",
              "encoder.embed_images.conv1.weight",
              "encoder.embed_images.layer1.0.downsample.0.weight",
              "encoder.embed_images.layer1.0.downsample.1.running_mean",
              "encoder.image_proj.weight", "encoder.embed_image_positions.weight",
              "encoder.token_rel_pos_table_list.1.weight",
              "decoder.image_rel_pos_table_list.0.weight",
              "decoder.layers.1.cross_attn.c_attn",
              "decoder.layers.0.cross_attn_mid_layer_norm.bias",
              "decoder.code_layernorm_embedding.weight"):
    assert key in sd, key


@pytest.mark.parametrize("naming", [names.HF, names.FAIRSEQ])
def test_round_trip_through_torch_naming(demo, naming):
  _, abstract, variables = demo
  sd = cc.to_state_dict(variables, naming)
  if naming == names.FAIRSEQ:
    assert "encoder.layers.0.attn_ln.weight" in sd
    assert "decoder.layers.0.encoder_attn.k_proj.weight" in sd
    assert "decoder.layers.0.ffn_layernorm.bias" in sd
  else:
    assert "encoder.layers.0.self_attn_mid_layer_norm.weight" in sd
  assert "decoder.output_projection.weight" in sd
  back, detected = cc.convert_state_dict(sd, target=abstract)
  assert detected == naming
  _assert_trees_equal(back, variables)


def test_known_buffers_and_wrapper_prefix_are_accepted(demo):
  _, abstract, variables = demo
  sd = {"model." + k: v for k, v in cc.to_state_dict(variables, names.HF).items()}
  sd.update({
      "model.encoder.version": np.array([3.0]),
      "model.decoder.version": np.array([3.0]),
      "model.encoder.token_rp_bucket": np.zeros((8, 8), np.int64),
      "model.decoder.image_rp_bucket": np.zeros((8, 8), np.int64),
      "model.decoder.image_position_idx": np.arange(9),
      "model.encoder.embed_images.bn1.num_batches_tracked": np.array(5),
  })
  back, _ = cc.convert_state_dict(sd, target=abstract)
  _assert_trees_equal(back, variables)


def test_linear_and_conv_layouts(demo):
  _, abstract, variables = demo
  sd = cc.to_state_dict(variables, names.HF)
  fc1 = variables["params"]["encoder"]["layers_0"]["fc1"]["kernel"]
  np.testing.assert_array_equal(sd["encoder.layers.0.fc1.weight"], fc1.T)
  conv = variables["params"]["encoder"]["images"]["embed_images"]["conv1"]["kernel"]
  torch_conv = sd["encoder.embed_images.conv1.weight"]
  assert torch_conv.shape == (conv.shape[3], conv.shape[2], conv.shape[0],
                              conv.shape[1])
  np.testing.assert_array_equal(torch_conv[2, 1, 3, 4], conv[3, 4, 1, 2])
  del abstract


def _errors(sd, abstract) -> str:
  with pytest.raises(ConversionError) as info:
    cc.convert_state_dict(sd, target=abstract)
  return str(info.value)


def test_missing_keys_are_named(demo):
  _, abstract, variables = demo
  sd = cc.to_state_dict(variables, names.FAIRSEQ)
  del sd["decoder.layers.1.encoder_attn.q_proj.bias"]
  del sd["encoder.embed_images.layer2.0.bn1.running_var"]
  msg = _errors(sd, abstract)
  assert "2 problem(s)" in msg
  # Named as the (fairseq) source spells them.
  assert "missing key 'decoder.layers.1.encoder_attn.q_proj.bias'" in msg
  assert "missing key 'encoder.embed_images.layer2.0.bn1.running_var'" in msg


def test_unknown_keys_are_named(demo):
  _, abstract, variables = demo
  sd = cc.to_state_dict(variables, names.HF)
  sd["encoder.layers.0.w_resid"] = np.ones(128, np.float32)
  sd["classification_heads.snli.dense.weight"] = np.ones((2, 2), np.float32)
  msg = _errors(sd, abstract)
  assert "unknown key 'encoder.layers.0.w_resid'" in msg
  assert "unknown key 'classification_heads.snli.dense.weight'" in msg
  # Dropping them on purpose works.
  cc.convert_state_dict(sd, target=abstract, ignore_patterns=[
      r"\.w_resid$", r"^classification_heads\."])


def test_errors_use_the_source_spelling_with_its_prefix(demo):
  _, abstract, variables = demo
  sd = {"model." + k: v
        for k, v in cc.to_state_dict(variables, names.FAIRSEQ).items()}
  del sd["model.decoder.layers.0.cross_attn_ln.weight"]
  sd["model.encoder.layers.0.attn_ln.weight"] = np.ones(3, np.float32)
  sd["model.encoder.prompt.weight"] = np.ones(3, np.float32)
  msg = _errors(sd, abstract)
  assert "missing key 'model.decoder.layers.0.cross_attn_ln.weight'" in msg
  assert "shape mismatch for 'model.encoder.layers.0.attn_ln.weight'" in msg
  assert "unknown key 'model.encoder.prompt.weight'" in msg


def test_wrong_shapes_are_named_with_both_shapes(demo):
  _, abstract, variables = demo
  sd = cc.to_state_dict(variables, names.HF)
  sd["encoder.image_proj.weight"] = sd["encoder.image_proj.weight"][:, :-1]
  emb = sd["encoder.embed_tokens.weight"][:-1]
  for alias in names.SHARED_EMBEDDING_ALIASES:
    sd[alias] = emb
  msg = _errors(sd, abstract)
  assert "2 problem(s)" in msg
  assert "shape mismatch for 'encoder.image_proj.weight'" in msg
  assert "shape mismatch for 'encoder.embed_tokens.weight'" in msg
  assert str(emb.shape) in msg


def test_all_problems_are_reported_together(demo):
  _, abstract, variables = demo
  sd = cc.to_state_dict(variables, names.HF)
  del sd["decoder.layer_norm.bias"]
  sd["decoder.extra.weight"] = np.zeros(3, np.float32)
  sd["decoder.pos_ln.weight"] = np.zeros(5, np.float32)
  with pytest.raises(ConversionError) as info:
    cc.convert_state_dict(sd, target=abstract)
  assert len(info.value.problems) == 3


def test_orbax_save_and_load(demo, tmp_path):
  _, abstract, variables = demo
  out = tmp_path / "converted"
  cc.save_converted(variables, str(out), {"config_name": "demo"})
  restored = cc.load_converted(str(out))
  _assert_trees_equal(restored, variables)
  _assert_trees_equal(cc.load_converted(str(out / cc.CHECKPOINT_SUBDIR)),
                      variables)
  assert cc.load_metadata(str(out)) == {"config_name": "demo"}
  # Restoring onto explicit shardings (what a partitioned loader does).
  import jax  # pylint: disable=g-import-not-at-top
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      abstract)
  placed = cc.load_converted(str(out), target=target)
  _assert_trees_equal(placed, variables)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(placed))
  with pytest.raises(FileNotFoundError, match="no converted checkpoint"):
    cc.load_converted(str(tmp_path / "nothing"))


# ---------------------------------------------------------------------------
# The command line tool (needs torch to write a .pt file).
# ---------------------------------------------------------------------------
def _write_pt(path, sd, **extra):
  torch = pytest.importorskip("torch", reason="the parity extra (torch) is "
                              "not installed")
  torch.save({"model": {k: torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in sd.items()}, **extra}, str(path))


@pytest.mark.slow
@pytest.mark.parity
def test_tool_converts_a_fairseq_pt_file(demo, tmp_path):
  tool = load_tool()
  _, _, variables = demo
  pt = tmp_path / "ofa_demo.pt"
  _write_pt(pt, cc.to_state_dict(variables, names.FAIRSEQ), args=None)
  vocab = tmp_path / "vocab"
  vocab.mkdir()
  for f in tool.BPE_FILES:
    (vocab / f).write_text(f"content of {f}")
  out = tmp_path / "out"
  rc = tool.main([str(pt), str(out), "--size", "demo", "--override",
                  "vocab_size=64", "--vocab_dir", str(vocab)])
  assert rc == 0
  # The tool pads the embedding to 128 rows (zeros); OFA's 64 rows unchanged.
  _assert_trees_equal(cc.load_converted(str(out)), _padded(variables, 128))
  meta = json.loads((out / cc.METADATA_FILE).read_text())
  assert meta["config_name"] == "demo"
  assert meta["config_overrides"] == {"vocab_size": 64}
  assert meta["source_naming"] == names.FAIRSEQ
  assert meta["source"] == str(pt)
  for f in tool.BPE_FILES:
    assert (out / f).read_text() == f"content of {f}"
  # A second run refuses to overwrite without --force.
  assert tool.main([str(pt), str(out), "--size", "demo", "--override",
                    "vocab_size=64"]) == 2
  assert tool.main([str(pt), str(out), "--size", "demo", "--override",
                    "vocab_size=64", "--force"]) == 0


def test_tool_reports_bad_checkpoints(demo, tmp_path, capsys):
  tool = load_tool()
  _, _, variables = demo
  sd = cc.to_state_dict(variables, names.HF)
  del sd["encoder.pos_ln.bias"]
  pt = tmp_path / "broken.bin"
  _write_pt(pt, sd)
  rc = tool.main([str(pt), str(tmp_path / "out"), "--size", "demo",
                  "--override", "vocab_size=64"])
  assert rc == 2
  assert "missing key 'encoder.pos_ln.bias'" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "out" / cc.CHECKPOINT_SUBDIR)


def test_tool_explains_pickled_fairseq_args(tmp_path):
  import argparse  # pylint: disable=g-import-not-at-top
  tool = load_tool()
  pt = tmp_path / "with_args.pt"
  _write_pt(pt, {"encoder.layer_norm.weight": np.ones(2, np.float32)},
            args=argparse.Namespace(arch="ofa_tiny"))
  with pytest.raises(ValueError, match="--allow_pickle"):
    tool.load_torch_state_dict(str(pt))
  sd = tool.load_torch_state_dict(str(pt), allow_pickle=True)
  assert list(sd) == ["encoder.layer_norm.weight"]


def test_tool_parses_overrides():
  tool = load_tool()
  assert tool.parse_overrides(["vocab_size=100", "dtype=bfloat16",
                               "resnet_layers=(1, 1, 1)"]) == {
                                   "vocab_size": 100, "dtype": "bfloat16",
                                   "resnet_layers": (1, 1, 1)}
  with pytest.raises(ValueError, match="NAME=VALUE"):
    tool.parse_overrides(["vocab_size"])


# ---------------------------------------------------------------------------
# A converted directory is a model directory: Generalist.load needs nothing else.
# ---------------------------------------------------------------------------
def _tiny_bpe_files(directory):
  """OFA's three BPE files for a byte-level vocabulary (256 symbols, no merges)."""
  from ofa_jax import bpe  # pylint: disable=g-import-not-at-top
  directory.mkdir()
  chars = [bpe.bytes_to_unicode()[b] for b in range(256)]
  (directory / "encoder.json").write_text(
      json.dumps({c: i for i, c in enumerate(chars)}))
  (directory / "vocab.bpe").write_text("#version: 0.2\n")
  (directory / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(256)))
  return directory


@pytest.mark.slow
def test_generalist_loads_a_converted_checkpoint_without_arguments(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from ofa_jax import api  # pylint: disable=g-import-not-at-top
  from ofa_jax import bpe  # pylint: disable=g-import-not-at-top
  from ofa_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  vocab_dir = _tiny_bpe_files(tmp_path / "vocab")
  vocab = vocab_lib.ofa_bpe_vocabulary(
      *(str(vocab_dir / f) for f in ("encoder.json", "vocab.bpe", "dict.txt")))
  config = config_lib.get_config("demo", vocab_size=vocab.vocab_size)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                           cc.abstract_variables(config))
  out = tmp_path / "converted"
  load_tool().write_model_dir(
      cc.to_state_dict(variables, names.HF), str(out), "demo",
      overrides={"vocab_size": vocab.vocab_size}, vocab_dir=str(vocab_dir))
  # The directory names no absolute path: it still loads after a move.
  moved = tmp_path / "elsewhere"
  os.rename(out, moved)
  generalist = api.Generalist.load(str(moved))
  # The tool pads the embedding as gin runs do (config_lib's default multiple).
  padding = config_lib.DEFAULT_VOCAB_PAD_MULTIPLE
  padded = config.replace(vocab_pad_multiple=padding)
  assert generalist.model.config == padded
  assert isinstance(generalist.vocabulary.text_tokenizer, bpe.GPT2BPETokenizer)
  assert generalist.vocabulary.vocab_size == vocab.vocab_size
  _assert_trees_equal(
      {c: generalist._params[c] for c in cc.COLLECTIONS},  # pylint: disable=protected-access
      _padded(variables, padded.padded_vocab_size))
