"""`tools/benchmark.py`'s command line: the flags, their checks, and `--quick`.

Why apart from the runner: what a benchmark run measures is decided here (the
flags and how `--quick` shrinks them to a smoke run) before anything heavy is
imported; `benchmark.run` only executes the sections. jax must not be imported by
this module: `use_quick_compiler_flags` has to set XLA_FLAGS before the CPU
client exists.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import MutableMapping, Optional

SECTIONS = ("train", "decode", "input", "memory", "vq")


def _ints(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated ints, got "
                                     f"{text!r}") from e


def _strings(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def _tokenizer_cases(text: str) -> list[tuple[str, int, int]]:
  from tools import bench_vq  # pylint: disable=g-import-not-at-top
  try:
    return bench_vq.parse_tokenizer_cases(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      description="ofa_jax benchmarks (see BENCHMARKS.md)",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--preset", default="base")
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--encoder_length", type=int, default=256,
                  help="image patches + text tokens")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--num_images", type=int, default=1)
  ap.add_argument("--decoder_length", type=int, default=32)
  ap.add_argument("--dtype", default="float32",
                  choices=("float32", "bfloat16"))
  ap.add_argument("--vocab_size", type=int, default=None,
                  help="default: the preset's (OFA's 59457)")
  ap.add_argument("--sections", default=",".join(SECTIONS))
  ap.add_argument("--config_overrides", type=json.loads, default=None,
                  help='OFAConfig fields for the train section, as JSON, e.g. '
                  '\'{"num_codes": 0, "num_bins": 64}\' (the demo vocabulary)')
  ap.add_argument("--repeats", type=int, default=3)
  # Not imported from ofa_jax here: jax must not load before the XLA flags.
  ap.add_argument("--prng_impl", default=None,
                  choices=("threefry2x32", "rbg", "unsafe_rbg"),
                  help="PRNG of the train step's dropout masks (default: the "
                  "trainer's, train_state.DEFAULT_DROPOUT_PRNG)")
  ap.add_argument("--peak_n", type=int, default=2048,
                  help="side of the peak-measuring matmul")
  ap.add_argument("--breakdown", action="store_true",
                  help="time ResNet / forward / backward parts of the step")
  ap.add_argument("--profile_dir", default=None,
                  help="write a jax.profiler trace of two train steps here")
  # decode
  ap.add_argument("--decode_preset", default=None, help="default: --preset")
  ap.add_argument("--decode_batch_size", type=int, default=1)
  ap.add_argument("--caption_lengths", type=_ints, default=[16, 32])
  ap.add_argument("--image_preset", default="demo")
  ap.add_argument("--image_codes", type=_ints, default=[256, 1024])
  ap.add_argument("--image_uncached_max", type=int, default=256,
                  help="longest image-code run also timed without the cache")
  ap.add_argument("--beam_size", type=int, default=5)
  # input
  ap.add_argument("--input_batch_size", type=int, default=32)
  ap.add_argument("--input_batches", type=int, default=10)
  ap.add_argument("--input_image_size", type=int, default=64)
  # memory
  ap.add_argument("--memory_presets", default="base,large")
  ap.add_argument("--memory_layouts", default="dp,fsdp,fsdp_conv,mp")
  ap.add_argument("--memory_no_compile", action="store_true")
  # vq
  ap.add_argument("--vq_tokenizers", type=_tokenizer_cases,
                  default="demo:32:16,f8_8192:256:1",
                  help="VQGAN cases PRESET:IMAGE_SIZE:BATCH_SIZE, comma-"
                  "separated (f8_8192 at 256 px is OFA's tokenizer: 1024 "
                  "codes); '' skips")
  ap.add_argument("--vq_generation_presets", type=_strings, default="tiny",
                  help="OFA presets timed generating image codes; '' skips")
  ap.add_argument("--vq_generation_batch_sizes", type=_ints, default=[1, 4])
  ap.add_argument("--vq_codes", type=int, default=1024,
                  help="codes generated per image (OFA: 1024 for 256 px)")
  ap.add_argument("--vq_text_length", type=int, default=32,
                  help="text prompt tokens of the generation")
  ap.add_argument("--vq_top_k", type=int, default=256)
  ap.add_argument("--vq_methods", type=_strings, default="sample",
                  help="'sample' (OFA's text-to-image) and/or 'greedy' (the "
                  "same loop without top-k filtering and the draw)")
  # PyTorch comparison
  ap.add_argument("--compare_pytorch", action="store_true",
                  help="also time OFA's PyTorch network (modelscope port, the "
                  "parity extra) on the train step and caption beam search")
  ap.add_argument("--torch_threads", type=int, default=None,
                  help="torch intra-op threads (default: os.cpu_count())")
  ap.add_argument("--quick", action="store_true",
                  help="tiny shapes and presets, XLA backend optimizations "
                  "off: a smoke run, not a figure")
  ap.add_argument("--out", default=None, help="JSON file to write")
  return ap


def apply_quick(args: argparse.Namespace) -> None:
  """Shrinks everything to a smoke run (seconds per section on a free core)."""
  args.preset = "demo"
  args.batch_size = 2
  args.image_size = 32
  args.encoder_length = 4 + 8
  args.decoder_length = 8
  args.vocab_size = args.vocab_size or 9400
  args.repeats = 2
  args.peak_n = 256
  args.decode_preset = "demo"
  args.caption_lengths = [4]
  args.image_codes = [16]
  args.image_uncached_max = 0
  args.beam_size = 2
  args.input_batch_size = 4
  args.input_batches = 2
  args.input_image_size = 32
  args.memory_presets = "demo"
  args.memory_layouts = "dp,fsdp"
  args.memory_no_compile = True
  args.vq_tokenizers = [("demo", 32, 1)]
  args.vq_generation_presets = ["demo"]
  args.vq_generation_batch_sizes = [1]
  args.vq_codes = 16
  args.vq_text_length = 8


# XLA's LLVM backend optimizations off: a smoke run's programs are compiled once
# and run a few times, so optimizing them costs more than it saves (about half
# of a train step's compile time on a CPU). Quick mode only: its figures are
# not figures.
QUICK_XLA_FLAG = "--xla_backend_optimization_level=0"


def use_quick_compiler_flags(
    environ: Optional[MutableMapping[str, str]] = None) -> None:
  """Adds `QUICK_XLA_FLAG` to XLA_FLAGS (default: this process's environment)
  unless an optimization level is set there.

  Must run before the first computation creates the CPU client (importing
  jax is fine); the memory section's subprocess inherits it.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if "--xla_backend_optimization_level" not in flags:
    environ["XLA_FLAGS"] = f"{flags} {QUICK_XLA_FLAG}".strip()


def check(args: argparse.Namespace) -> None:
  """Refuses impossible values before any section runs (SystemExit names the flag)."""
  for name in ("batch_size", "repeats", "decode_batch_size", "beam_size",
               "vq_codes", "vq_text_length"):
    if getattr(args, name) < 1:
      raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.torch_threads is not None and args.torch_threads < 1:
    raise SystemExit(f"--torch_threads must be >= 1, got {args.torch_threads}")
