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
from typing import Any, MutableMapping, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

SECTIONS = ("train", "decode", "input", "memory", "vq")
# Sections whose figures are set against the measured matmul peak.
_PEAK_SECTIONS = ("train", "input", "vq")


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


def _fmt(x: Optional[float], unit: str = "") -> str:
  if x is None:
    return "-"
  for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.2f}{suffix}{unit}"
  return f"{x:.3g}{unit}"


def table(result: dict[str, Any]) -> str:
  """The short human summary of a result dict."""
  lines = []
  m = result.get("machine", {})
  lines.append(f"machine: {m.get('device_kind')} x{m.get('num_devices')}, "
               f"{m.get('cpu_count')} cpus, load {m.get('load_average')}")
  if "peak" in result:
    p = result["peak"]
    lines.append(f"peak matmul ({p['dtype']}, n={p['n']}): "
                 f"{_fmt(p['flops_per_s'], 'FLOP/s')}")
  if "train" in result:
    t = result["train"]
    lines.append(
        f"train {t['preset']} {t['dtype']} B={t['batch_size']} "
        f"enc={t['encoder_length']} dec={t['decoder_length']}: "
        f"step {t['step']['median_s']:.3f}s, {t['examples_per_s']:.2f} ex/s, "
        f"{_fmt(t['tokens_per_s'])} tok/s, MFU {100 * t['mfu']:.1f}%, "
        f"compile {t['compile_s']:.1f}s, XLA/analytic FLOPs "
        f"{t['xla_over_model_flops'] or 0:.3f}")
    for name, part in (t.get("breakdown") or {}).items():
      lines.append(f"  {name:<18} {part['median_s']:.3f}s "
                   f"({100 * part['fraction_of_step']:.0f}% of step)")
    if "pytorch" in t:
      p = t["pytorch"]
      lines.append(
          f"  train step: ofa_jax {t['step']['median_s']:.3f} s ({t['dtype']}), "
          f"PyTorch OFA {p['median_s']:.3f} s (float32, torch {p['torch_version']}, "
          f"{_threads(p['threads'])}): {t['speedup_vs_pytorch']:.2f}x")
    if "profile" in t:
      lines.append("  profile (CPU time by XLA op kind): " + ", ".join(
          f"{r['name']} {100 * r['share']:.0f}%"
          for r in t["profile"]["by_category"][:8]))
  if "decode" in result:
    lines.append("decode: preset kind length method cached  tokens/s "
                 "(without encoder)  (compile s)")
    for r in result["decode"]["rows"]:
      lines.append(f"  {r['preset']:<6} {r['kind']:<11} {r['length']:>5} "
                   f"{r['method']:<6} {str(r['cached']):<5} "
                   f"{r['tokens_per_s']:>9.1f} ({r['loop_tokens_per_s']:.1f})"
                   f"  ({r['compile_s']:.1f})")
    for s in result["decode"]["speedups"]:
      lines.append(f"  cache speed-up {s['kind']} {s['length']} {s['method']}: "
                   f"{s['cached_over_uncached']:.1f}x "
                   f"(without encoder {s['loop_cached_over_uncached']:.1f}x)")
    lines += _pytorch_decode_lines(result["decode"])
  if "input" in result:
    i = result["input"]
    for p in i["pipelines"]:
      lines.append(f"input {p['name']}: {p['examples_per_s']:.1f} ex/s "
                   f"(median batch), {i['pipeline_over_train_step'][p['name']]:.1f}x "
                   "the demo train step")
    lines.append(f"demo train step: "
                 f"{i['demo_train_step']['examples_per_s']:.1f} ex/s")
  if "memory" in result:
    for r in result["memory"]:
      if "error" in r:
        lines.append(f"memory {r['preset']} {r['layout']}: ERROR {r['error'][:200]}")
        continue
      act = r.get("activation_bytes_per_device")
      lines.append(
          f"memory {r['preset']:<6} {r['layout']:<9} mesh {r['mesh']}: params "
          f"{_fmt(r['params_bytes_per_device'], 'B')}, opt "
          f"{_fmt(r['opt_state_bytes_per_device'], 'B')}, act "
          f"{_fmt(act, 'B')}, (params+opt)/(total/N) "
          f"{r['params_opt_over_ideal']:.3f}")
  if "vq" in result:
    lines += _vq_table(result["vq"])
  return "\n".join(lines)


def _threads(n: int) -> str:
  return f"{n} thread" + ("" if n == 1 else "s")


def _pytorch_decode_lines(decode: dict[str, Any]) -> list[str]:
  """One line per caption length compared with PyTorch OFA's beam search."""
  lines = []
  for p in decode.get("pytorch", []):
    rows = {r["cached"]: r for r in decode["rows"] if r["kind"] == "text" and
            r["method"] == "beam" and r["length"] == p["max_length"]}
    ours = rows.get(True) or rows.get(False)
    line = (f"  beam-{p['beam_size']} {p['max_length']} tokens "
            f"B={p['batch_size']}: ofa_jax {ours['median_s']:.3f} s "
            f"({'cached' if ours['cached'] else 'uncached'}), PyTorch OFA "
            f"{p['median_s']:.3f} s (torch {p['torch_version']}, "
            f"{_threads(p['threads'])}): {ours['speedup_vs_pytorch']:.2f}x")
    if ours["cached"] and False in rows:
      line += f" (uncached {rows[False]['speedup_vs_pytorch']:.2f}x)"
    lines.append(line)
  return lines


def _vq_table(vq: dict[str, Any]) -> list[str]:
  lines = []
  for r in vq["tokenizer"]:
    for part in ("encode", "decode"):
      t = r[part]
      peak = t.get("fraction_of_peak")
      lines.append(
          f"vq {part} {r['preset']:<8} {r['image_size']}px B={r['batch_size']}: "
          f"{t['images_per_s']:.2f} img/s, {_fmt(t['flops_per_image'], 'FLOP')}"
          f"/img, {_fmt(t['flops_per_s'], 'FLOP/s')}"
          + (f" ({100 * peak:.0f}% of peak)" if peak is not None else "")
          + f", compile {t['compile_s']:.1f}s")
  for r in vq["generation"]:
    lines.append(
        f"vq generate {r['preset']:<6} {r['codes']} codes B={r['batch_size']} "
        f"{r['method']}: {r['codes_per_s']:.1f} codes/s "
        f"(without encoder {r['loop_codes_per_s']:.1f}), "
        f"{r['ms_per_step']:.1f} ms/step, {r['seconds_per_image']:.2f} s/image, "
        f"{_fmt(r['model_flops_per_image'], 'FLOP')}/img, "
        f"{_fmt(r['flops_per_s'], 'FLOP/s')}, "
        f"compile {r['compile_s']:.1f}s")
  for s in vq["text_to_image"]:
    lines.append(
        f"vq text-to-image {s['generator']} B={s['batch_size']} + "
        f"{s['tokenizer']}: generate {s['generate_s_per_image']:.2f} s/img, "
        f"VQGAN decode {s['vqgan_decode_s_per_image']:.2f} s/img "
        f"({100 * s['generation_share']:.0f}% generation)")
  if not lines:
    lines.append("vq: nothing measured")
  return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if args.quick:
    apply_quick(args)
    use_quick_compiler_flags()
  for name in ("batch_size", "repeats", "decode_batch_size", "beam_size",
               "vq_codes", "vq_text_length"):
    if getattr(args, name) < 1:
      raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.torch_threads is not None and args.torch_threads < 1:
    raise SystemExit(f"--torch_threads must be >= 1, got {args.torch_threads}")
  result = run(args)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=str)
  print(table(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
