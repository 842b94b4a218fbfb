"""Print examples of a task or mixture as the model will see them.

    python tools/inspect_task.py demo_grounding -n 2
    python tools/inspect_task.py demo_mixture -n 4 --split validation \
        --sequence_length inputs=96 targets=32
    python tools/inspect_task.py my_task --register my_tasks:register -n 3

A task whose streams no model piece consumes yet (an AUDIO, VIDEO or MOTION
input, a dense target) is registered with `register_task(..., data_only=True)`:
it is refused for training but inspects like any other.

For each example: the task, the encoder sequence in instruction order (each token
run decoded, with its ids, and each dense slot where the model will splice it in),
the decoder targets token by token with their loss mask and kind (prompt tokens
show loss 0), and the shape, dtype and value range of every dense stream. Then the
static shapes of the model features after `OFAFeatureConverter`. The demo tasks are
registered first, so this runs on a fresh machine.

Why a tool: an instruction is a one-line program; this is its debugger. A wrong
slot order, a missing `</s>`, a prompt that is trained, a box in the wrong pixel
frame or a stream padded to the wrong length is visible here in seconds.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Mapping, Optional, Sequence, TextIO

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

_KIND_NAMES = {0: "pad", 1: "text", 2: "bin", 3: "code"}


def _parse_lengths(items: Sequence[str], defaults: Mapping[str, int]
                   ) -> dict[str, int]:
  from ofa_jax import modalities
  lengths = dict(defaults)
  known = set(lengths) | set(modalities.length_keys())
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or key not in known:
      raise SystemExit(f"--sequence_length expects KEY=INT with KEY in "
                       f"{sorted(known)}, got {item!r}")
    try:
      lengths[key] = int(value)
    except ValueError:
      raise SystemExit(f"--sequence_length {key}: {value!r} is not an int") from None
  return lengths


def _piece(vocab, token: int) -> str:
  specials = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>"}
  if token in specials:
    return specials[token]
  return vocab.decode([int(token)]) or repr(vocab.decode([int(token)]))


def _stats(x: np.ndarray) -> str:
  if x.size == 0:
    return f"{x.dtype}{list(x.shape)} (empty)"
  return (f"{x.dtype}{list(x.shape)} min={x.min():.3g} max={x.max():.3g} "
          f"mean={x.mean():.3g}")


def _encoder_lines(ex: Mapping[str, np.ndarray], vocab) -> list[str]:
  """Runs of tokens and dense slots interleaved in instruction order."""
  from ofa_jax import features as F
  from ofa_jax import modalities
  inputs = ex[F.INPUTS].tolist()
  # (text_offset, rank, description) of every present dense input slot.
  slots = [(off, rank, desc)
           for off, rank, _, desc in modalities.input_placements(ex)]
  lines = []
  # Cut the tokens where dense slots go; print each piece after its slots.
  bounds = sorted({0, len(inputs), *[o for o, _, _ in slots]})
  for start, end in zip(bounds, bounds[1:] + [None]):
    lines += [f"    [slot rank {rank}] {desc}" for off, rank, desc in slots
              if off == start]
    run = inputs[start:end] if end is not None else []
    if run:
      pieces = " ".join(_piece(vocab, t) for t in run)
      lines.append(f"    tokens[{start}:{end}] {pieces}")
      lines.append(f"      ids {run}")
  return lines


def _target_lines(ex: Mapping[str, np.ndarray], vocab) -> list[str]:
  from ofa_jax import features as F
  rows = []
  for t, m, k in zip(ex[F.TARGETS], ex[F.TARGET_LOSS_MASK], ex[F.TARGET_KINDS]):
    rows.append(f"{_piece(vocab, int(t))}/{int(m)}/{_KIND_NAMES.get(int(k), k)}")
  n_prompt = int(np.argmax(ex[F.TARGET_LOSS_MASK] > 0)) if np.any(
      ex[F.TARGET_LOSS_MASK] > 0) else len(ex[F.TARGET_LOSS_MASK])
  return [f"    (token/loss/kind) {' '.join(rows)}",
          f"    text: {vocab.decode(ex[F.TARGETS].tolist())!r}  "
          f"forced prompt tokens: {n_prompt}"]


def inspect(name: str, n: int, split: str, lengths: Mapping[str, int],
            out: TextIO = sys.stdout, seed: int = 0) -> None:
  import seqio
  from ofa_jax import features as F
  from ofa_jax import modalities
  from ofa_jax import plan as plan_lib
  from ofa_jax.feature_converter import OFAFeatureConverter

  provider = seqio.get_mixture_or_task(name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  by_id = {F.task_id_of(t.name): t for t in tasks}
  ds = provider.get_dataset(lengths, split=split, shuffle=False, seed=seed,
                            **({"num_epochs": 1} if isinstance(
                                provider, seqio.Mixture) else {}))
  examples = list(ds.take(n).as_numpy_iterator())
  print(f"{name} [{split}] sequence_length={dict(lengths)}", file=out)
  for i, ex in enumerate(examples):
    task = by_id.get(int(ex[F.TASK_ID]))
    tplan: Optional[Any] = getattr(task, "plan", None)
    vocab = tplan.vocab if tplan is not None else task.output_features[
        F.TARGETS].vocabulary
    print(f"\n=== example {i}: task {task.name if task else ex[F.TASK_ID]}",
          file=out)
    if tplan is not None:
      print(f"  instruction: {tplan.template.template}", file=out)
      d = tplan.decoding
      print(f"  decoding: {d.kind} beam={d.beam_size} len=[{d.min_len}, "
            f"{d.max_len}]" + (f" labels={list(d.labels)}" if d.labels else ""),
            file=out)
    print(f"  encoder ({len(ex[F.INPUTS])} tokens):", file=out)
    for line in _encoder_lines(ex, vocab):
      print(line, file=out)
    print(f"  decoder targets ({len(ex[F.TARGETS])} tokens):", file=out)
    for line in _target_lines(ex, vocab):
      print(line, file=out)
    print(f"  sample_weight={float(ex[F.SAMPLE_WEIGHT])} task_id={int(ex[F.TASK_ID])}",
          file=out)
    print("  dense streams:", file=out)
    for modality in modalities.dense_modalities():
      for side in (modality.input_streams, modality.target_streams):
        if not side:
          continue
        primary, companions = side[0], side[1:]
        small = ", ".join(f"{c.name}={np.round(ex[c.name], 3).tolist()}"
                          for c in companions if ex[c.name].size <= 8)
        print(f"    {primary.name}: {_stats(ex[primary.name])}  {small}",
              file=out)
  converter = OFAFeatureConverter(pack=False)
  model_ds = converter(ds.take(max(n, 1)), lengths)
  data_only = sorted(t.name for t in tasks
                     if getattr(getattr(t, "plan", None), "data_only", False))
  if data_only:
    print(f"\ndata-side only (inspection; not trainable): {data_only}", file=out)
  print("\nmodel features (per example, before batching):", file=out)
  for key, spec in sorted(model_ds.element_spec.items()):
    print(f"  {key}: {spec.dtype.name}{spec.shape.as_list()}", file=out)
  counts = plan_lib.skip_counts(name)
  nonzero = {k: v for k, v in counts.items() if v}
  print(f"\nskipped / repaired so far: {nonzero or 'none'}", file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("name", help="task or mixture name (e.g. demo_caption)")
  parser.add_argument("-n", type=int, default=2, help="number of examples")
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sequence_length", nargs="*", default=[],
                      metavar="KEY=INT", help="override task feature lengths")
  parser.add_argument("--image_size", type=int, default=64,
                      help="image size of the demo tasks")
  parser.add_argument("--register", action="append", default=[],
                      metavar="MODULE:FUNCTION",
                      help="also call this function (e.g. my_tasks:register) to "
                      "register your own tasks; repeatable")
  args = parser.parse_args(argv)
  if args.n < 1:
    parser.error("-n must be >= 1")

  from ofa_jax import tf_setup
  tf_setup.hide_accelerators_from_tensorflow()
  import seqio
  from tasks import demo
  demo.register_demo_tasks(image_size=args.image_size, replace=True)
  for spec in args.register:
    module_name, sep, fn_name = spec.partition(":")
    if not sep:
      parser.error(f"--register expects MODULE:FUNCTION, got {spec!r}")
    getattr(importlib.import_module(module_name), fn_name)()
  if args.name not in seqio.TaskRegistry.names() and \
      args.name not in seqio.MixtureRegistry.names():
    known = sorted(set(seqio.TaskRegistry.names()) | set(
        seqio.MixtureRegistry.names()))
    print(f"unknown task or mixture {args.name!r}; registered: {known}",
          file=sys.stderr)
    return 2
  lengths = _parse_lengths(args.sequence_length, demo.FEATURE_LENGTHS)
  inspect(args.name, args.n, args.split, lengths, seed=args.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
