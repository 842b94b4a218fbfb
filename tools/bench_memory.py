"""Benchmark section `memory`: per-device bytes under data-parallel, FSDP and model parallel.

Runs in its own process (`python tools/bench_memory.py --json ...`, started by
`tools/benchmark.py`) because the fake 8-device CPU mesh must be requested
through XLA_FLAGS before jax is imported, and the other sections want the
ordinary single device.

Nothing is materialized: the train state is abstract (`jax.eval_shape`), its
per-device bytes come from each leaf's shard shape under the layout's
shardings, and the step is lowered and compiled on abstract inputs, whose
`memory_analysis()` gives the per-device argument / output / temporary
(activation) bytes of the executable. So base and large presets can be
measured on a machine that could not hold them.

Layouts (`ofa_jax/partitioning.py`):
  dp         parameters replicated, batch split over 8 devices;
  fsdp       plus the `embed` dimension of parameters / optimizer state split;
  fsdp_conv  fsdp plus `conv_out -> data` (the ResNet's convolutions, which have
             no `embed` axis, are otherwise replicated under fsdp);
  mp         `heads`, `mlp`, `joined_kv`, `vocab` split over a model axis of
             the largest of 8/4/2 that divides the number of heads.
The vocabulary is padded to a multiple of 128 (OFA's 59457 is odd, and a
sharded dimension must divide evenly); the padding is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYOUTS = ("dp", "fsdp", "fsdp_conv", "mp")


def _setup_env(num_devices: int) -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  flags = " ".join(f for f in flags.split()
                   if not f.startswith("--xla_force_host_platform_device_count"))
  os.environ["XLA_FLAGS"] = (
      flags + f" --xla_force_host_platform_device_count={num_devices}").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _shard_bytes(abstract: Any, shardings: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0
  for leaf, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    shape = sh.shard_shape(leaf.shape) if leaf.shape else ()
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def _partitioner(layout: str, heads: int):
  from ofa_jax import partitioning  # pylint: disable=g-import-not-at-top
  if layout == "dp":
    return partitioning.make_partitioner(1, fsdp=False), 1
  if layout == "fsdp":
    return partitioning.make_partitioner(1, fsdp=True), 1
  if layout == "fsdp_conv":
    return partitioning.make_partitioner(
        1, fsdp=True, additional_rules=(("conv_out", partitioning.DATA_AXIS),)), 1
  if layout == "mp":
    import jax  # pylint: disable=g-import-not-at-top
    n = jax.device_count()
    parts = next(p for p in (8, 4, 2, 1) if n % p == 0 and heads % p == 0)
    return partitioning.make_partitioner(parts, fsdp=False), parts
  raise ValueError(f"Unknown layout {layout!r}; known: {LAYOUTS}")


def measure(preset: str, layout: str, *, batch_size: int, text_length: int,
            decoder_length: int, image_size: int, dtype: str,
            compile_step: bool = True) -> dict[str, Any]:
  """Per-device bytes of one preset under one layout (abstract, compile only)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ofa_jax import optimizers  # pylint: disable=g-import-not-at-top
  from ofa_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import transformer  # pylint: disable=g-import-not-at-top
  from ofa_jax.models import OFAModel  # pylint: disable=g-import-not-at-top
  from tools import bench_common as common  # pylint: disable=g-import-not-at-top

  ofa_vocab = config_lib.get_config(preset).vocab_size
  vocab = -(-ofa_vocab // 128) * 128
  cfg = common.make_config(preset, dtype=dtype, vocab_size=vocab)
  part, model_parts = _partitioner(layout, cfg.attention_heads)
  model = OFAModel(cfg)
  tx = optimizers.adamw(learning_rate=1e-4, total_steps=1000)
  dummy = transformer.dummy_batch(cfg, image_size=32)
  boxed, _ = ts.abstract_and_init(
      lambda rng: transformer.init_variables(cfg, rng, dummy), tx)
  state_sh = part.logical_to_mesh_shardings(boxed)
  abstract = nn.meta.unbox(boxed)
  n = jax.device_count()
  out: dict[str, Any] = {
      "preset": preset, "layout": layout, "num_devices": n,
      "mesh": dict(part.mesh.shape), "model_partitions": model_parts,
      "vocab_size": vocab, "ofa_vocab_size": ofa_vocab, "dtype": dtype,
      "batch_size": batch_size,
  }
  totals = {}
  for name in ("params", "opt_state", "model_state"):
    sub, sub_sh = getattr(abstract, name), getattr(state_sh, name)
    out[f"{name}_bytes_per_device"] = _shard_bytes(sub, sub_sh)
    totals[name] = common.nbytes(sub)
    out[f"{name}_bytes_total"] = totals[name]
  po = out["params_bytes_per_device"] + out["opt_state_bytes_per_device"]
  ideal = (totals["params"] + totals["opt_state"]) / n
  out["params_opt_over_ideal"] = po / ideal
  if not compile_step:
    return out

  batch = common.train_batch(cfg, batch_size=batch_size,
                             text_length=text_length,
                             decoder_length=decoder_length,
                             image_size=image_size)
  compiled = common.compile_abstract_train_step(model, tx, part, abstract,
                                                state_sh, batch)
  # This table has always reported lowering + compiling as compile_s.
  compiled["compile_s"] += compiled.pop("lower_s")
  out.update(compiled)
  return out


def run(presets: Sequence[str], layouts: Sequence[str], **kwargs
        ) -> list[dict[str, Any]]:
  rows = []
  for preset in presets:
    for layout in layouts:
      try:
        rows.append(measure(preset, layout, **kwargs))
      except Exception as e:  # pylint: disable=broad-except
        # One layout failing (e.g. an uneven shard) must not hide the others.
        rows.append({"preset": preset, "layout": layout,
                     "error": f"{type(e).__name__}: {e}"[:2000]})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="base,large")
  ap.add_argument("--layouts", default=",".join(LAYOUTS))
  ap.add_argument("--num_devices", type=int, default=8)
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--text_length", type=int, default=60)
  ap.add_argument("--decoder_length", type=int, default=32)
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--no_compile", action="store_true")
  args = ap.parse_args(argv)
  _setup_env(args.num_devices)
  if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
  rows = run([p for p in args.presets.split(",") if p],
             [l for l in args.layouts.split(",") if l],
             batch_size=args.batch_size, text_length=args.text_length,
             decoder_length=args.decoder_length, image_size=args.image_size,
             dtype=args.dtype, compile_step=not args.no_compile)
  print(json.dumps(rows))


if __name__ == "__main__":
  main()
