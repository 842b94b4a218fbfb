"""benchmark.py --compare_pytorch: OFA's PyTorch network timed next to ours.

What must hold for the ratio to mean anything: the PyTorch twin
(`tools/bench_pytorch.py`) has exactly our parameter count for the same config
(also for a ResNet modelscope has no name for, the demo's), its train step
trains (the loss falls on a fixed batch), its beam search decodes the asked
number of positions, and the benchmark records the ratio and prints it. The
benchmark wiring is checked with our sections replaced by fixed figures, so the
test times only the (tiny) PyTorch side; speeds themselves are never checked.
"""

from __future__ import annotations

import importlib.util
import json
import math

import jax
import pytest

from ofa_jax.model import config as config_lib
from ofa_jax.model import testing
from tools import bench_common as common
from tools import bench_pytorch
from tools import benchmark


def _missing_modules() -> list[str]:
  """Modules of the parity extra this file needs, found without importing.

  Importing modelscope's OFA takes ~15 s; collection should not pay it.
  """
  missing = []
  for name in ("torch", "modelscope", "fairseq"):
    try:
      if importlib.util.find_spec(name) is None:
        missing.append(name)
    except (ImportError, ValueError):
      missing.append(name)
  return missing


_SKIP_REASON = (f"OFA's PyTorch port unavailable (missing: "
                f"{', '.join(_missing_modules())}); install the parity extra: "
                "pip install -e '.[parity]'") if _missing_modules() else None

_QUICK = dict(vocab_size=9400)  # benchmark --quick's demo vocabulary
_SHAPES = dict(batch_size=2, text_length=6, image_size=32)


def _demo(**overrides) -> config_lib.OFAConfig:
  kw = {"dtype": "float32", **_QUICK, **overrides}
  return common.make_config("demo", **kw)


def _our_parameter_count(config: config_lib.OFAConfig) -> int:
  batch = common.train_batch(config, batch_size=1, text_length=4,
                             decoder_length=3, image_size=32)
  params = testing.random_variables(config, batch)["params"]
  return int(sum(x.size for x in jax.tree.leaves(params)))


def test_config_maps_presets_to_modelscope_names():
  kw = bench_pytorch.torch_config_kwargs(config_lib.get_config("base"))
  assert kw["resnet_type"] == "resnet101"
  assert (kw["d_model"], kw["encoder_layers"], kw["decoder_attention_heads"],
          kw["encoder_ffn_dim"]) == (768, 6, 12, 3072)
  large = config_lib.get_config("large")
  assert bench_pytorch.resnet_type(large) == "resnet152"
  assert bench_pytorch.resnet_type(config_lib.get_config("tiny")) == "resnet50"
  # Not a torchvision depth or width: built explicitly, not refused.
  assert bench_pytorch.resnet_type(_demo()) == "custom"


@pytest.mark.parametrize("overrides,message", [
    (dict(dtype="bfloat16"), "float32 only"),
    (dict(max_target_positions=128), "max_position_embeddings"),
    (dict(target_heads=("image_codes",)), "target_heads"),
])
def test_config_without_a_modelscope_twin_is_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    bench_pytorch.check_config(_demo(**overrides))


def test_benchmark_flags():
  args = benchmark.build_parser().parse_args([])
  assert not args.compare_pytorch and args.torch_threads is None
  args = benchmark.build_parser().parse_args(
      ["--compare_pytorch", "--torch_threads", "3"])
  assert args.compare_pytorch and args.torch_threads == 3


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or "")
@pytest.mark.parametrize("preset", ["demo", "tiny"])
def test_parameter_count_equals_ours(preset):
  # demo: a custom ResNet ((1, 1, 1) at width 16); tiny: modelscope's resnet50.
  config = common.make_config(preset, dtype="float32",
                              **(_QUICK if preset == "demo" else {}))
  model = bench_pytorch.build_model(config)
  assert bench_pytorch.count_parameters(model) == _our_parameter_count(config)


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or "")
def test_train_step_trains_and_is_timed():
  import torch  # pylint: disable=g-import-not-at-top
  threads_before = torch.get_num_threads()
  config = _demo(dropout=0.0)  # a deterministic step: the loss must fall
  r = bench_pytorch.time_train_step(
      config, decoder_length=5, repeats=2, threads=1, learning_rate=1e-3,
      **_SHAPES)
  losses = r["losses"]  # warm-up + 2 timed steps, on the same batch
  assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
  assert losses[0] > losses[1] > losses[2], losses
  assert r["median_s"] > 0 and r["min_s"] > 0 and len(r["times_s"]) == 2
  assert r["threads"] == r["torch_num_threads"] == 1
  assert r["torch_version"] == torch.__version__
  assert r["num_params"] == _our_parameter_count(config)
  assert torch.get_num_threads() == threads_before  # restored


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or "")
def test_beam_search_decodes_the_asked_length():
  r = bench_pytorch.time_beam_search(
      _demo(dropout=0.0), max_length=5, beam_size=3, repeats=1, threads=1,
      **_SHAPES)
  assert r["median_s"] > 0 and r["tokens_per_s"] > 0
  assert r["tokens_generated"] == 2 * 5 and r["beam_size"] == 3


def _fake_train(**kw):
  return {"preset": kw["preset"], "dtype": kw["dtype"],
          "batch_size": kw["batch_size"], "encoder_length": 12,
          "decoder_length": kw["decoder_length"], "step": {"median_s": 0.25},
          "examples_per_s": 8.0, "tokens_per_s": 160.0, "mfu": 0.1,
          "compile_s": 1.0, "xla_over_model_flops": 1.0}


def _fake_decode_rows(**kw):
  return [{"preset": kw["preset"], "kind": kw["kind"], "length": length,
           "method": method, "beam_size": beams, "cached": cached,
           "batch_size": kw["batch_size"], "median_s": 0.5 if cached else 1.0,
           "tokens_per_s": 10.0, "loop_tokens_per_s": 12.0, "compile_s": 1.0}
          for length in kw["lengths"]
          for method, beams in (("greedy", 1), ("beam", kw["beam_size"]))
          for cached in (True, False)]


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or "")
def test_quick_benchmark_records_and_prints_the_ratio(monkeypatch):
  from tools import bench_decode  # pylint: disable=g-import-not-at-top
  from tools import bench_train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(bench_train, "run", _fake_train)
  monkeypatch.setattr(bench_decode, "run_lengths", _fake_decode_rows)
  monkeypatch.setattr(common, "matmul_peak", lambda *a, **k: {
      "dtype": "float32", "n": 8, "flops_per_s": 1e9})
  args = benchmark.build_parser().parse_args(
      ["--quick", "--sections", "train,decode", "--compare_pytorch",
       "--torch_threads", "1"])
  benchmark.apply_quick(args)
  args.image_codes = []  # captions only: the comparison's rows
  result = benchmark.run(args)

  train = result["train"]
  torch_train = train["pytorch"]
  assert torch_train["median_s"] > 0 and torch_train["threads"] == 1
  assert torch_train["num_params"] == _our_parameter_count(_demo())
  assert train["speedup_vs_pytorch"] == pytest.approx(
      torch_train["median_s"] / 0.25)

  decode = result["decode"]
  (torch_beam,) = decode["pytorch"]
  assert torch_beam["max_length"] == 4 and torch_beam["beam_size"] == 2
  assert torch_beam["median_s"] > 0
  beams = {r["cached"]: r for r in decode["rows"] if r["method"] == "beam"}
  assert beams[True]["speedup_vs_pytorch"] == pytest.approx(
      torch_beam["median_s"] / 0.5)
  assert beams[False]["speedup_vs_pytorch"] == pytest.approx(
      torch_beam["median_s"] / 1.0)
  assert all("speedup_vs_pytorch" not in r for r in decode["rows"]
             if r["method"] == "greedy")

  json.dumps(result)  # JSON-able as written by benchmark.py
  text = benchmark.table(result)
  assert "train step: ofa_jax 0.250 s (float32), PyTorch OFA" in text
  assert "beam-2 4 tokens B=1: ofa_jax 0.500 s (cached), PyTorch OFA" in text
  assert "1 thread)" in text and "(uncached " in text
