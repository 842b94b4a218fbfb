"""taming VQGAN checkpoints -> ofa_jax: key naming, every problem named, the
reverse map, and ``tools/convert_vqgan_checkpoint.py`` end to end against
PyTorch's decoder.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax.model.vqgan import VQGAN, init_variables
from ofa_jax.model.vqgan import conversion
from ofa_jax.model.vqgan import io as vq_io

try:
  from tests.test_vqgan_parity import build_taming_vqgan, tiny_config  # pylint: disable=g-import-not-at-top
except ImportError:  # run with tests/ itself on sys.path
  from test_vqgan_parity import build_taming_vqgan, tiny_config  # pylint: disable=g-import-not-at-top

# The tiny config as the tool's command line spells it.
TINY_OVERRIDES = ("resolution=16", "ch=32", "ch_mult=(1, 2)", "num_res_blocks=1",
                  "attn_resolutions=(8,)", "z_channels=32", "embed_dim=32",
                  "n_embed=64")


def load_tool():
  """``tools/convert_vqgan_checkpoint.py`` as a module, whatever sys.path holds."""
  name = "ofa_jax_tools_convert_vqgan_checkpoint"
  if name in sys.modules:
    return sys.modules[name]
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))), "tools", "convert_vqgan_checkpoint.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("collection,path,key", [
    ("params", ("encoder", "conv_in", "kernel"), "encoder.conv_in.weight"),
    ("params", ("encoder", "down_0", "block_1", "norm1", "scale"),
     "encoder.down.0.block.1.norm1.weight"),
    ("params", ("encoder", "down_2", "attn_0", "proj_out", "bias"),
     "encoder.down.2.attn.0.proj_out.bias"),
    ("params", ("encoder", "down_0", "downsample", "conv", "kernel"),
     "encoder.down.0.downsample.conv.weight"),
    ("params", ("decoder", "mid", "block_1", "nin_shortcut", "kernel"),
     "decoder.mid.block_1.nin_shortcut.weight"),
    ("params", ("decoder", "mid", "attn_1", "q", "kernel"),
     "decoder.mid.attn_1.q.weight"),
    ("params", ("decoder", "up_3", "upsample", "conv", "bias"),
     "decoder.up.3.upsample.conv.bias"),
    ("params", ("quantize", "embedding"), "quantize.embedding.weight"),
    ("params", ("quantize", "embed"), "quantize.embed.weight"),
    ("params", ("quantize", "proj", "kernel"), "quantize.proj.weight"),
    ("vq_ema", ("quantize", "embedding"), "quantize.embedding.weight"),
    ("vq_ema", ("quantize", "cluster_size"), "quantize.embedding.cluster_size"),
    ("vq_ema", ("quantize", "embed_avg"), "quantize.embedding.embed_avg"),
])
def test_flax_path_to_torch_key(collection, path, key):
  assert conversion.flax_path_to_torch_key(collection, path) == key


@pytest.mark.parametrize("quantizer", ["vq", "ema"])
def test_state_dict_round_trip(quantizer):
  """to_state_dict then convert_state_dict gives the variables back (the EMA
  statistics included), with loss keys skipped and counted."""
  config = tiny_config(quantizer)
  variables = init_variables(config, jax.random.PRNGKey(0))
  state_dict = conversion.to_state_dict(variables)
  assert state_dict["encoder.conv_in.weight"].shape == (32, 3, 3, 3)  # OIHW
  state_dict["loss.discriminator.main.0.weight"] = np.zeros((4, 3, 4, 4))
  back, report = conversion.convert_state_dict(state_dict, config)
  assert report["num_skipped"] == 1
  assert report["num_converted"] == len(state_dict) - 1
  assert jax.tree.structure(back) == jax.tree.structure(
      jax.tree.map(np.asarray, variables))
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_every_problem_is_named():
  config = tiny_config("vq")
  state_dict = conversion.to_state_dict(
      init_variables(config, jax.random.PRNGKey(0)))
  state_dict["encoder.extra_head.weight"] = np.zeros((2, 2))
  del state_dict["decoder.mid.attn_1.k.bias"]
  state_dict["quantize.embedding.weight"] = np.zeros((63, 32))
  with pytest.raises(conversion.VQGANConversionError) as info:
    conversion.convert_state_dict(state_dict, config)
  message = str(info.value)
  assert "3 problem(s)" in message
  assert "unknown key 'encoder.extra_head.weight'" in message
  assert "missing key 'decoder.mid.attn_1.k.bias'" in message
  assert "shape mismatch for 'quantize.embedding.weight'" in message
  assert isinstance(info.value, ValueError)


def _save_checkpoint(tmp_path, state_dict, *, lightning: bool) -> str:
  import torch  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / ("last.ckpt" if lightning else "vqgan.pt"))
  payload = {"state_dict": state_dict, "global_step": 7} if lightning else (
      state_dict)
  torch.save(payload, path)
  return path


def _tool_args(in_path: str, out_dir: str, quantizer: str) -> list[str]:
  args = [in_path, out_dir, "--config", "f8_8192",
          "--override", f"quantizer={quantizer}"]
  for override in TINY_OVERRIDES:
    args += ["--override", override]
  return args


@pytest.mark.parity
@pytest.mark.parametrize("quantizer", ["gumbel", "vq"])
def test_tool_end_to_end(tmp_path, capsys, quantizer):
  torch = pytest.importorskip("torch")
  config = tiny_config(quantizer)
  net = build_taming_vqgan(config, seed=2)
  state_dict = dict(net.state_dict())
  state_dict["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
  state_dict["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
  in_path = _save_checkpoint(tmp_path, state_dict, lightning=True)
  out_dir = str(tmp_path / "converted")

  assert load_tool().main(_tool_args(in_path, out_dir, quantizer)) == 0
  assert "skipped 2 keys under loss." in capsys.readouterr().out
  # A second conversion into the same place needs --force.
  assert load_tool().main(_tool_args(in_path, out_dir, quantizer)) == 2
  assert "--force" in capsys.readouterr().err
  assert load_tool().main(
      _tool_args(in_path, out_dir, quantizer) + ["--force"]) == 0

  loaded_config, variables = vq_io.load_vqgan(out_dir, expected_num_codes=64)
  assert loaded_config == config
  metadata = vq_io.load_metadata(out_dir)
  assert metadata["num_skipped"] == 2 and metadata["config_name"] == "f8_8192"
  assert len(metadata["source_sha256"]) == 64
  # Decoding random codes: PyTorch's pixels.
  codes = np.random.default_rng(0).integers(0, 64, (2, 8, 8))
  with torch.no_grad():
    if quantizer == "gumbel":
      vectors = net.quantize.embed(torch.as_tensor(codes))
    else:
      vectors = net.quantize.embedding(torch.as_tensor(codes))
    expected = net.decoder(net.post_quant_conv(vectors.permute(0, 3, 1, 2)))
  decoded = jax.jit(lambda v, c: VQGAN(config).apply(
      v, c, method="decode_codes"))(variables, jnp.asarray(codes, jnp.int32))
  np.testing.assert_allclose(decoded, expected.permute(0, 2, 3, 1).numpy(),
                             atol=1e-4, rtol=0)


@pytest.mark.parity
def test_tool_names_every_problem_and_writes_nothing(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  config = tiny_config("vq")
  state_dict = dict(build_taming_vqgan(config).state_dict())
  state_dict["encoder.extra_head.weight"] = torch.zeros(2, 2)
  del state_dict["decoder.up.1.block.0.conv2.weight"]
  state_dict["post_quant_conv.weight"] = torch.zeros(32, 31, 1, 1)
  in_path = _save_checkpoint(tmp_path, state_dict, lightning=False)
  out_dir = str(tmp_path / "converted")

  assert load_tool().main(_tool_args(in_path, out_dir, "vq")) == 2
  err = capsys.readouterr().err
  for name in ("encoder.extra_head.weight", "decoder.up.1.block.0.conv2.weight",
               "post_quant_conv.weight"):
    assert name in err, name
  assert "unknown key" in err and "missing key" in err
  assert "shape mismatch" in err
  assert not os.path.exists(out_dir)
