"""The analytic FLOP count (`ofa_jax/flops.py`) against XLA's cost analysis, and a
smoke run of `tools/benchmark.py --quick`.

XLA counts every HLO op, elementwise ones included (LayerNorm, softmax, GELU),
while the analytic count keeps matrix products only, so XLA's figure is a few
percent higher on the whole network. On the ResNet alone XLA is slightly lower:
it does not count the taps of a convolution that fall on zero padding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ofa_jax import flops
from ofa_jax.model import resnet, testing, transformer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**kw):
  base = dict(vocab_size=300, d_model=128, ffn_dim=512, encoder_layers=2,
              decoder_layers=2, num_codes=16, num_bins=16)
  base.update(kw)
  return testing.small_config(**base)


def _xla_forward_flops(cfg, batch):
  variables = testing.random_variables(cfg, batch)
  model = transformer.OFATransformer(cfg)
  compiled = jax.jit(lambda v, b: model.apply(v, b, train=False)).lower(
      variables, batch).compile()
  return flops.xla_flops(compiled)


@pytest.mark.parametrize("image_size,patches", [(224, 196), (384, 576),
                                                (480, 900)])
def test_patch_counts_match_ofa_resolutions(image_size, patches):
  # OFA: 224 px -> 14x14 patches, 384 -> 24x24, 480 -> 30x30 (stride 16).
  assert flops.num_patches(_config(), image_size) == patches


def test_counts_scale_as_the_architecture_says():
  cfg = _config()
  one = flops.encoder_flops(cfg, 10)
  two = flops.encoder_flops(cfg, 20)
  assert two["ffn"] == 2 * one["ffn"]
  assert two["attention_proj"] == 2 * one["attention_proj"]
  assert two["attention_scores"] == 4 * one["attention_scores"]
  wide = flops.encoder_flops(cfg.replace(ffn_dim=2 * cfg.ffn_dim), 10)
  assert wide["ffn"] == 2 * one["ffn"]
  dec = flops.decoder_flops(cfg, 8, 10)
  dec_v = flops.decoder_flops(cfg.replace(vocab_size=600), 8, 10)
  assert dec_v["logits"] == 2 * dec["logits"]
  assert dec_v["ffn"] == dec["ffn"]


def test_train_step_is_three_forwards_less_the_stem():
  cfg = _config()
  shape = flops.StepShape(batch_size=2, text_length=8, decoder_length=6,
                          num_images=1, image_size=64)
  fwd = flops.forward_flops(cfg, shape)
  assert fwd["total"] == sum(v for k, v in fwd.items() if k != "total")
  assert fwd["resnet_stem"] > 0
  assert flops.train_step_flops(cfg, shape) == 3 * fwd["total"] - (
      fwd["resnet_stem"])
  text_only = flops.StepShape(2, 8, 6, num_images=0, image_size=0)
  assert flops.train_step_flops(cfg, text_only) == 3 * flops.forward_flops(
      cfg, text_only)["total"]


def test_bad_step_shape_is_refused_by_name():
  with pytest.raises(ValueError, match="batch_size=0"):
    flops.StepShape(batch_size=0, text_length=4, decoder_length=4)


def test_resnet_count_matches_xla():
  cfg = _config(resnet_width=16)
  model = resnet.ResNet(cfg)
  x = jnp.zeros((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, False))
  compiled = jax.jit(lambda v, x: model.apply(v, x, False)).lower(
      variables, x).compile()
  counted = flops.resnet_flops(cfg, 64)
  ratio = flops.xla_flops(compiled) / (2 * (counted["stem"] + counted["blocks"]))
  assert 0.95 <= ratio <= 1.05, ratio


@pytest.mark.slow
@pytest.mark.parametrize("num_images", [0, 1])
def test_forward_count_matches_xla(num_images):
  cfg = _config()
  batch = testing.random_batch(cfg, batch_size=2, input_length=24,
                               target_length=16, num_images=num_images,
                               image_size=64, num_input_pads=0)
  shape = flops.StepShape(2, 24, 16, num_images=num_images, image_size=64)
  analytic = flops.forward_flops(cfg, shape)["total"]
  ratio = _xla_forward_flops(cfg, batch) / analytic
  # Elementwise work is what XLA adds; it is under 15% at d_model=128.
  assert 1.0 <= ratio <= 1.15, ratio


def test_quick_benchmark_turns_backend_optimizations_off_unless_told():
  from tools import bench_args  # pylint: disable=g-import-not-at-top
  env = {}
  bench_args.use_quick_compiler_flags(env)
  assert env == {"XLA_FLAGS": bench_args.QUICK_XLA_FLAG}
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  bench_args.use_quick_compiler_flags(env)
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                      bench_args.QUICK_XLA_FLAG]
  chosen = {"XLA_FLAGS": "--xla_backend_optimization_level=2"}
  bench_args.use_quick_compiler_flags(chosen)
  assert chosen == {"XLA_FLAGS": "--xla_backend_optimization_level=2"}


@pytest.mark.slow
def test_benchmark_quick_emits_valid_json(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)  # the tool's own sections choose their devices
  proc = subprocess.run(
      [sys.executable, os.path.join(_ROOT, "tools", "benchmark.py"), "--quick",
       "--out", str(out)], cwd=_ROOT, env=env, capture_output=True, text=True,
      timeout=1800, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(out.read_text())
  assert set(result) >= {"machine", "peak", "train", "decode", "input",
                         "memory", "vq", "command"}
  train = result["train"]
  assert train["step"]["median_s"] > 0 and 0 < train["mfu"]
  assert train["model_flops_per_step"] > 0
  assert 0.8 < train["xla_over_model_flops"] < 2.0
  kinds = {(r["kind"], r["method"], r["cached"]) for r in
           result["decode"]["rows"]}
  assert ("text", "beam", True) in kinds and ("text", "beam", False) in kinds
  assert ("image_codes", "greedy", True) in kinds
  assert all(r["tokens_per_s"] > 0 for r in result["decode"]["rows"])
  assert {p["name"] for p in result["input"]["pipelines"]} == {
      "demo_caption", "demo_mixture"}
  layouts = {r["layout"]: r for r in result["memory"]}
  assert layouts["dp"]["params_opt_over_ideal"] == pytest.approx(8.0)
  assert layouts["fsdp"]["params_opt_over_ideal"] < 8.0
  vq = result["vq"]
  assert [r["preset"] for r in vq["tokenizer"]] == ["demo"]
  assert all(r[part]["images_per_s"] > 0 for r in vq["tokenizer"]
             for part in ("encode", "decode"))
  assert [r["codes"] for r in vq["generation"]] == [16]
  assert vq["generation"][0]["codes_per_s"] > 0
  assert "peak matmul" in proc.stdout and "MFU" in proc.stdout
