"""One command for the ofa_jax figures: train step / MFU, decoding, input
pipeline, memory, VQ tokenization and image generation.

    python tools/benchmark.py --preset base --batch_size 8 --encoder_length 256 \
        --image_size 224 --decoder_length 32 --dtype float32 \
        --sections train,decode,input,memory --out bench.json
    python tools/benchmark.py --quick --out /tmp/quick.json   # smoke run, ~minutes
    python tools/benchmark.py --sections train,decode --compare_pytorch ...

`--encoder_length` is the whole encoder sequence: image patches (196 at 224 px)
plus text tokens, so 256 at 224 px means 60 text tokens. Every figure is a
median over `--repeats` runs after warm-up; compile times are separate. The
JSON (`--out`) holds everything, with the machine, its load and the command;
a short table is printed. See BENCHMARKS.md for the recorded figures and what
they say.

Sections:
  train   the jitted train step: examples/s, tokens/s, MFU against a matmul
          peak measured in the same run and dtype, XLA's FLOP count next to the
          analytic one (`ofa_jax/flops.py`); `--breakdown` splits the step.
  decode  greedy and beam-5 tokens/s with and without the KV cache, at caption
          lengths (`--decode_preset`) and image-generation lengths
          (`--image_preset`; uncached only up to `--image_uncached_max`).
  input   SeqIO pipeline examples/s (an image task, the demo mixture) next to
          the demo preset's train step.
  memory  per-device parameter / optimizer / activation bytes on a fake
          8-device mesh, in a subprocess (`tools/bench_memory.py`).
  vq      VQGAN encode / decode images/s with analytic FLOPs and FLOP/s
          (`--vq_tokenizers PRESET:IMAGE_SIZE:BATCH,...`), and codes/s of
          sampled, cached image-code generation (`--vq_codes` codes, top-k
          `--vq_top_k`) for `--vq_generation_presets` at
          `--vq_generation_batch_sizes` (`tools/bench_vq.py`).

`--compare_pytorch` also times OFA's own PyTorch network (the modelscope port,
the parity extra; `tools/bench_pytorch.py`) with the same config and batch, in
the same run: its train step next to ours (`train.pytorch`,
`train.speedup_vs_pytorch` = PyTorch seconds / ours), and its fairseq-style
beam search next to our beam rows of the caption lengths (`decode.pytorch`,
`speedup_vs_pytorch` on each beam row). `--torch_threads` sets torch's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# The command line and the printed summary live in their own modules; their
# names are re-exported because this file is the command people and tests call.
from tools.bench_args import (SECTIONS, apply_quick, build_parser,  # pylint: disable=g-import-not-at-top,unused-import
                              check as check_args, use_quick_compiler_flags)
from tools.bench_report import table  # pylint: disable=g-import-not-at-top

# Sections whose figures are set against the measured matmul peak.
_PEAK_SECTIONS = ("train", "input", "vq")

def _text_length(args) -> int:
  from ofa_jax import flops  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.get_config(args.preset)
  patches = args.num_images * flops.num_patches(cfg, args.image_size) if (
      args.num_images) else 0
  text = args.encoder_length - patches
  if text < 1:
    raise SystemExit(f"--encoder_length={args.encoder_length} leaves no text: "
                     f"{args.num_images} image(s) of {args.image_size} px take "
                     f"{patches} positions")
  return text


def run_memory(args) -> Any:
  cmd = [sys.executable, os.path.join(_ROOT, "tools", "bench_memory.py"),
         "--presets", args.memory_presets, "--layouts", args.memory_layouts,
         "--batch_size", str(args.batch_size),
         "--text_length", str(_text_length(args)),
         "--decoder_length", str(args.decoder_length),
         "--image_size", str(args.image_size), "--dtype", args.dtype]
  if args.memory_no_compile:
    cmd.append("--no_compile")
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT,
                        check=False)
  if proc.returncode:
    raise RuntimeError(f"memory section failed (exit {proc.returncode}): "
                       f"{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_config(args: argparse.Namespace):
  """The config the train section builds (bench_train.run's), as PyTorch runs it.

  PyTorch's side is always float32 (OFA's CPU training dtype): with
  `--dtype bfloat16` the ratio says what our faster dtype buys against it.
  """
  from tools import bench_common as common  # pylint: disable=g-import-not-at-top
  return common.make_config(args.preset, dtype="float32",
                            vocab_size=args.vocab_size,
                            **(args.config_overrides or {}))


def _decode_config(args: argparse.Namespace, length: int):
  """The config the decode section builds for captions of `length` positions."""
  from tools import bench_common as common  # pylint: disable=g-import-not-at-top
  cfg = common.make_config(args.decode_preset or args.preset, dtype=args.dtype,
                           vocab_size=args.vocab_size, dropout=0.0)
  if length + 2 > cfg.max_target_positions:
    # bench_decode grows max_target_positions only; modelscope has one size
    # for both tables. Position tables do not change the speed.
    cfg = cfg.replace(max_source_positions=length + 2,
                      max_target_positions=length + 2)
  return cfg


def _check_pytorch(args: argparse.Namespace, sections: Sequence[str]) -> None:
  """Fails before any section runs when the comparison cannot be made."""
  from tools import bench_pytorch  # pylint: disable=g-import-not-at-top
  if args.num_images != 1:
    raise SystemExit(f"--compare_pytorch needs --num_images=1 (modelscope's "
                     f"OFA takes one image here), got {args.num_images}")
  try:
    bench_pytorch.check_available()
    if "train" in sections:
      bench_pytorch.check_config(_train_config(args))
    if "decode" in sections and args.caption_lengths:
      longest = max(args.caption_lengths)
      bench_pytorch.check_config(_decode_config(args, longest))
  except (ImportError, ValueError) as e:
    raise SystemExit(f"--compare_pytorch: {e}") from e


def compare_train(args: argparse.Namespace, train: dict[str, Any],
                  text_length: int) -> None:
  """Times PyTorch OFA's train step; puts it and the ratio into `train`."""
  from tools import bench_pytorch  # pylint: disable=g-import-not-at-top
  torch_result = bench_pytorch.time_train_step(
      _train_config(args), batch_size=args.batch_size, text_length=text_length,
      decoder_length=args.decoder_length, image_size=args.image_size,
      repeats=args.repeats, threads=args.torch_threads)
  train["pytorch"] = torch_result
  train["speedup_vs_pytorch"] = (torch_result["median_s"] /
                                 train["step"]["median_s"])


def compare_decode(args: argparse.Namespace, decode: dict[str, Any],
                   text_length: int) -> None:
  """Times PyTorch OFA's beam search at each caption length with beam rows.

  The ratio (PyTorch seconds / ours) goes on every beam row of that length:
  the cached one is the headline, the uncached one does the same work as
  modelscope's generator (which reruns the decoder over the prefix).
  """
  from tools import bench_pytorch  # pylint: disable=g-import-not-at-top
  decode["pytorch"] = []
  for length in args.caption_lengths:
    rows = [r for r in decode["rows"] if r["kind"] == "text" and
            r["method"] == "beam" and r["length"] == length]
    if not rows:
      continue
    torch_result = bench_pytorch.time_beam_search(
        _decode_config(args, length), batch_size=args.decode_batch_size,
        text_length=text_length, image_size=args.image_size,
        max_length=length, beam_size=args.beam_size, repeats=args.repeats,
        threads=args.torch_threads)
    decode["pytorch"].append(torch_result)
    for r in rows:
      r["speedup_vs_pytorch"] = torch_result["median_s"] / r["median_s"]


def run(args: argparse.Namespace) -> dict[str, Any]:
  sections = [s for s in args.sections.split(",") if s]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise SystemExit(f"Unknown section(s) {unknown}; known: {SECTIONS}")
  if args.compare_pytorch:
    _check_pytorch(args, sections)
  from tools import bench_common as common  # pylint: disable=g-import-not-at-top
  result: dict[str, Any] = {"command": " ".join(sys.argv),
                            "args": vars(args).copy(),
                            "machine": common.machine_info()}
  peak = None
  if set(_PEAK_SECTIONS) & set(sections):
    peak = common.matmul_peak(args.dtype, n=args.peak_n)
    result["peak"] = peak
  text_length = _text_length(args)
  t0 = time.perf_counter()
  if "train" in sections:
    from tools import bench_train  # pylint: disable=g-import-not-at-top
    result["train"] = bench_train.run(
        preset=args.preset, batch_size=args.batch_size, text_length=text_length,
        decoder_length=args.decoder_length, image_size=args.image_size,
        num_images=args.num_images, dtype=args.dtype,
        vocab_size=args.vocab_size, repeats=args.repeats, peak=peak,
        breakdown=args.breakdown, profile_dir=args.profile_dir,
        prng_impl=args.prng_impl, config_overrides=args.config_overrides)
    if args.compare_pytorch:
      compare_train(args, result["train"], text_length)
  if "decode" in sections:
    from tools import bench_decode  # pylint: disable=g-import-not-at-top
    common_kw = dict(batch_size=args.decode_batch_size, dtype=args.dtype,
                     vocab_size=args.vocab_size, beam_size=args.beam_size,
                     repeats=args.repeats, image_size=args.image_size)
    rows = []
    if args.caption_lengths:  # an empty list skips captions
      rows += bench_decode.run_lengths(
          preset=args.decode_preset or args.preset, lengths=args.caption_lengths,
          kind="text", text_length=text_length, **common_kw)
    if args.image_codes:  # an empty list skips image generation
      rows += bench_decode.run_lengths(
          preset=args.image_preset, lengths=args.image_codes, kind="image_codes",
          text_length=min(text_length, 32),
          uncached_max_length=args.image_uncached_max, **common_kw)
    result["decode"] = {"rows": rows, "speedups": bench_decode.speedups(rows)}
    if args.compare_pytorch:
      compare_decode(args, result["decode"], text_length)
  if "input" in sections:
    from tools import bench_input  # pylint: disable=g-import-not-at-top
    result["input"] = bench_input.run(
        image_size=args.input_image_size, batch_size=args.input_batch_size,
        num_batches=args.input_batches, dtype=args.dtype,
        train_repeats=args.repeats, peak=peak,
        num_examples=max(200, args.input_batch_size * (args.input_batches + 4)))
  if "memory" in sections:
    result["memory"] = run_memory(args)
  if "vq" in sections:
    from tools import bench_vq  # pylint: disable=g-import-not-at-top
    result["vq"] = bench_vq.run(
        tokenizer_cases=args.vq_tokenizers,
        generation_presets=args.vq_generation_presets,
        generation_batch_sizes=args.vq_generation_batch_sizes,
        codes=args.vq_codes, text_length=args.vq_text_length,
        top_k=args.vq_top_k, methods=args.vq_methods, dtype=args.dtype,
        vocab_size=args.vocab_size, repeats=args.repeats, peak=peak)
  result["elapsed_s"] = time.perf_counter() - t0
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if args.quick:
    apply_quick(args)
    use_quick_compiler_flags()
  check_args(args)
  result = run(args)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=str)
  print(table(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
