"""The `vq` benchmark section (`tools/bench_vq.py`): its FLOP count, its JSON.

The analytic VQGAN FLOPs are checked exactly against an independent count: the
matrix products (convolutions and dot_generals) of the traced network's jaxpr.
The section itself runs on tiny shapes; only the fields and their consistency
are checked, never a speed.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import pytest

from ofa_jax.model import vqgan
from tools import bench_vq
from tools import benchmark

_SMALL_VQGAN = dict(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                    attn_resolutions=(16,), z_channels=32, embed_dim=32,
                    n_embed=64)
_SMALL_OFA = dict(d_model=32, ffn_dim=64, attention_heads=2, encoder_layers=1,
                  decoder_layers=1, num_bins=8)


def _product_flops(jaxpr) -> int:
  """2 x multiply-adds of every convolution and dot_general in a jaxpr."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval
      rhs = eqn.invars[1].aval
      out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2 * math.prod(out.shape) * math.prod(rhs.shape) // out_features
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs.shape[d] for d in lhs_contract)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _product_flops(inner)
  return total


def _traced_flops(config: vqgan.VQGANConfig, image_size: int) -> dict[str, int]:
  model = vqgan.VQGAN(config)
  variables = vqgan.abstract_variables(config)
  side = config.grid_side(image_size)
  pixels = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  codes = jax.ShapeDtypeStruct((1, side, side), jnp.int32)
  enc = jax.make_jaxpr(lambda v, x: model.apply(
      v, x, method=model.encode_codes))(variables, pixels)
  dec = jax.make_jaxpr(lambda v, c: model.apply(
      v, c, method=model.decode_codes))(variables, codes)
  return {"encode": _product_flops(enc.jaxpr),
          "decode": _product_flops(dec.jaxpr)}


@pytest.mark.parametrize("quantizer,image_size", [
    ("vq", 32),     # attention at 16 px in both encoder and decoder
    ("gumbel", 64),  # another image size: attention stays at level 1
    ("ema", 32)])
def test_vqgan_flops_equal_the_traced_products(quantizer, image_size):
  config = vqgan.VQGANConfig(quantizer=quantizer, **_SMALL_VQGAN)
  analytic = bench_vq.vqgan_flops(config, image_size)
  traced = _traced_flops(config, image_size)
  assert analytic["encode"]["total"] == traced["encode"]
  assert analytic["decode"]["total"] == traced["decode"]
  assert analytic["encode"]["attention_scores"] > 0
  assert analytic["decode"]["attention_scores"] > 0


def test_vqgan_flops_of_the_ofa_tokenizer_preset():
  # f8_8192 at 256 px, counted by hand for the parts that are easy to check.
  flops = bench_vq.vqgan_flops(vqgan.get_config("f8_8192"), 256)
  # The encoder's only attention: 2 blocks at 32x32 (512 channels, level 3).
  assert flops["encode"]["attention_scores"] == (
      2 + 1) * 4 * 1024 ** 2 * 512  # level 3 x2 and the mid block
  # Gumbel projection 256 -> 8192 over 1024 positions, plus quant_conv.
  assert flops["encode"]["quantizer"] == (2 * 1024 * 256 * 8192
                                          + 2 * 1024 * 256 * 256)
  assert flops["decode"]["quantizer"] == 2 * 1024 * 256 * 256
  assert flops["decode"]["total"] > flops["encode"]["total"]
  with pytest.raises(ValueError, match="downsample factor 8"):
    bench_vq.vqgan_flops(vqgan.get_config("f8_8192"), 100)


def test_parse_tokenizer_cases():
  assert bench_vq.parse_tokenizer_cases("demo:64:16, f8_8192:256:1") == [
      ("demo", 64, 16), ("f8_8192", 256, 1)]
  for bad, match in (("demo:64", "PRESET:IMAGE_SIZE"),
                     ("nope:64:1", "unknown VQGAN preset"),
                     ("demo:x:1", "must be ints"),
                     ("demo:64:0", ">= 1")):
    with pytest.raises(ValueError, match=match):
      bench_vq.parse_tokenizer_cases(bad)


def test_code_config_holds_the_codes():
  cfg = bench_vq.code_config("tiny", 1024)
  assert cfg.code_grid_size ** 2 >= 1024
  assert cfg.max_target_positions >= 1026
  cfg = bench_vq.code_config("demo", 10, vocab_size=9400)
  assert cfg.code_grid_size == 4 and cfg.dropout == 0.0


# The fastest VQGAN and OFA decoder to compile: the section's plumbing is under
# test, not the networks.
_TINY_VQGAN = dict(resolution=8, ch=32, ch_mult=(1,), num_res_blocks=1,
                   attn_resolutions=(), z_channels=32, embed_dim=32, n_embed=16)
_TINY_OFA = dict(_SMALL_OFA, num_codes=16)


def _check_tokenizer_row(tok, *, batch_size: int, peak: float) -> None:
  for part in ("encode", "decode"):
    t = tok[part]
    assert t["median_s"] > 0 and t["compile_s"] > 0
    assert t["images_per_s"] == pytest.approx(batch_size / t["median_s"])
    assert t["flops_per_image"] == tok["flops_by_part"][part]["total"] > 0
    assert t["flops_per_s"] == pytest.approx(
        batch_size * t["flops_per_image"] / t["median_s"])
    assert t["fraction_of_peak"] == pytest.approx(t["flops_per_s"] / peak)
    assert t["xla_flops_per_image"] > 0


def test_text_to_image_split_pairs_rows_by_code_count():
  tokenizer = [
      {"preset": "a", "batch_size": 1, "codes_per_image": 16,
       "decode": {"images_per_s": 2.0}},
      {"preset": "a", "batch_size": 4, "codes_per_image": 16,
       "decode": {"images_per_s": 4.0}},
      {"preset": "b", "batch_size": 1, "codes_per_image": 64,
       "decode": {"images_per_s": 100.0}}]
  generation = [
      {"preset": "tiny", "codes": 16, "batch_size": 2, "method": "sample",
       "seconds_per_image": 0.75},
      {"preset": "tiny", "codes": 16, "batch_size": 2, "method": "greedy",
       "seconds_per_image": 0.5},
      {"preset": "tiny", "codes": 32, "batch_size": 1, "method": "sample",
       "seconds_per_image": 1.0}]
  (split,) = bench_vq.text_to_image_split(tokenizer, generation)
  assert split["tokenizer_batch_size"] == 4  # the fastest decode of 16 codes
  assert split["vqgan_decode_s_per_image"] == pytest.approx(0.25)
  assert split["generation_share"] == pytest.approx(0.75)


@pytest.mark.slow  # compiles a VQGAN, an encoder and a sampling loop (10-25 s)
def test_section_runs_on_tiny_shapes_and_reports_consistent_fields():
  result = bench_vq.run(
      tokenizer_cases=[("demo", 4, 2)], generation_presets=["demo"],
      generation_batch_sizes=[2], codes=16, text_length=5, top_k=3,
      vocab_size=200, repeats=1, peak={"flops_per_s": 1e12},
      tokenizer_overrides=_TINY_VQGAN, generation_overrides=_TINY_OFA)
  json.dumps(result)  # JSON-able as written by benchmark.py
  (tok,) = result["tokenizer"]
  _check_tokenizer_row(tok, batch_size=2, peak=1e12)
  (row,) = result["generation"]
  assert (row["preset"], row["codes"], row["batch_size"], row["method"]) == (
      "demo", 16, 2, "sample")
  assert row["cached"] and row["num_codes"] == 16 and row["top_k"] == 3
  assert row["codes_per_s"] == pytest.approx(2 * 16 / row["median_s"])
  assert row["loop_codes_per_s"] >= row["codes_per_s"]
  assert row["seconds_per_image"] == pytest.approx(row["median_s"] / 2)
  assert row["compile_s"] > 0 and row["encoder_s"] > 0
  assert row["flops_per_s"] == pytest.approx(
      2 * row["model_flops_per_image"] / row["median_s"])
  assert row["fraction_of_peak"] == pytest.approx(row["flops_per_s"] / 1e12)
  (split,) = result["text_to_image"]
  assert split["tokenizer"] == "demo" and 0 < split["generation_share"] < 1
  assert split["vqgan_decode_s_per_image"] == pytest.approx(
      1 / tok["decode"]["images_per_s"])


def test_benchmark_cli_has_the_vq_section():
  args = benchmark.build_parser().parse_args(
      ["--sections", "vq", "--vq_tokenizers", "demo:64:4",
       "--vq_generation_presets", "tiny", "--vq_generation_batch_sizes", "1,8"])
  assert "vq" in benchmark.SECTIONS
  assert args.vq_tokenizers == [("demo", 64, 4)]
  assert args.vq_generation_batch_sizes == [1, 8]
  quick = benchmark.build_parser().parse_args(["--quick"])
  benchmark.apply_quick(quick)
  assert quick.vq_generation_presets == ["demo"] and quick.vq_codes <= 16
  with pytest.raises(SystemExit):
    benchmark.build_parser().parse_args(["--vq_tokenizers", "demo:64"])
  text = benchmark.table({"vq": {"tokenizer": [], "generation": [],
                                 "text_to_image": []}})
  assert "vq" in text
