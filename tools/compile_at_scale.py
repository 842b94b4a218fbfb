r"""Compile-only check of a preset's training step under a data x model mesh.

Why: the large and huge presets do not fit this machine, and a layout bug
(an axis that does not divide, a constraint that forces a gather) shows up
only when XLA partitions the step for the mesh. Lowering and compiling the
real train step (`train_state.make_train_step`: loss, gradients, AdamW) on
abstract inputs over fake CPU devices catches those without any weights:
parameters and optimizer state are `jax.eval_shape` shapes, never arrays.

Usage:
  python tools/compile_at_scale.py --preset large --mesh 4x2
  python tools/compile_at_scale.py --preset huge --mesh 8x2 --remat_policy full
  python tools/compile_at_scale.py --preset large --mesh 4x2 \
      --override encoder_layers=1 --override decoder_layers=1 --json

Prints per-device bytes: parameters, optimizer state and model state (from
the shard shape of every leaf under the layout), and the compiled
executable's `memory_analysis()` (arguments, outputs, temporaries = the
activations and gradients of the step), plus lower and compile seconds.

The fake devices (`--xla_force_host_platform_device_count`) are requested
before jax starts, so run it as its own process. XLA's backend optimizations
are off by default (`--optimize` turns them on): the partitioning and the
buffer sizes do not depend on them, the compile time does (a lot, on CPU).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_NO_OPT_FLAG = "--xla_backend_optimization_level=0"


def parse_mesh(text: str) -> tuple[int, int]:
  """'4x2' -> (data 4, model 2)."""
  parts = text.lower().split("x")
  try:
    data, model = (int(p) for p in parts)
  except ValueError:
    raise ValueError(f"--mesh {text!r}: expected DATAxMODEL, e.g. 4x2") from None
  if data < 1 or model < 1:
    raise ValueError(f"--mesh {text!r}: both sizes must be >= 1")
  return data, model


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """["encoder_layers=1", "resnet_layers=(1, 1, 1)"] -> config overrides."""
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"--override {item!r}: expected NAME=VALUE")
    try:
      out[name.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[name.strip()] = value.strip()
  return out


def setup_env(num_devices: int, optimize: bool) -> None:
  """XLA flags for `num_devices` fake CPU devices (before jax is imported)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith(_DEVICE_COUNT_FLAG)
           and not f.startswith("--xla_backend_optimization_level")]
  flags.append(f"{_DEVICE_COUNT_FLAG}={num_devices}")
  if not optimize:
    flags.append(_NO_OPT_FLAG)
  os.environ["XLA_FLAGS"] = " ".join(flags)
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shard_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes one device holds of an abstract tree under its shardings."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract),
                            jax.tree.leaves(shardings)):
    shape = sharding.shard_shape(leaf.shape) if leaf.shape else ()
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def measure(preset: str, data: int, model: int, *, fsdp: bool = False,
            remat_policy: str = "none", vocab_pad_multiple: int = 128,
            dtype: str = "bfloat16", batch_size: Optional[int] = None,
            text_length: int = 64, decoder_length: int = 32,
            image_size: int = 256, overrides: Optional[Mapping[str, Any]] = None,
            compile_step: bool = True) -> dict[str, Any]:
  """Lowers and compiles one train step; returns the figures as a dict.

  compile_step=False stops after the state's per-device bytes (seconds, not
  minutes: shapes and shardings only).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ofa_jax import optimizers  # pylint: disable=g-import-not-at-top
  from ofa_jax import partitioning  # pylint: disable=g-import-not-at-top
  from ofa_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import transformer  # pylint: disable=g-import-not-at-top
  from ofa_jax.models import OFAModel  # pylint: disable=g-import-not-at-top
  from tools import bench_common  # pylint: disable=g-import-not-at-top

  if jax.device_count() < data * model:
    raise ValueError(f"mesh {data}x{model} needs {data * model} devices; jax has "
                     f"{jax.device_count()} (run this tool as its own process)")
  cfg = config_lib.get_config(
      preset, **{"dtype": dtype, "remat_policy": remat_policy,
                 "vocab_pad_multiple": vocab_pad_multiple, "dropout": 0.1,
                 **dict(overrides or {})})
  part = partitioning.make_partitioner(
      model, fsdp=fsdp, devices=jax.devices()[:data * model])
  tx = optimizers.adamw(learning_rate=1e-4, total_steps=1000)
  # Shapes only: the init is traced by eval_shape, never run.
  dummy = transformer.dummy_batch(cfg, batch_size=1, image_size=32)
  boxed, _ = ts.abstract_and_init(
      lambda rng: transformer.init_variables(cfg, rng, dummy), tx)
  state_sh = part.logical_to_mesh_shardings(boxed)
  abstract = nn.meta.unbox(boxed)
  embed_spec = state_sh.params["embed_tokens"].spec
  out: dict[str, Any] = {
      "preset": preset, "mesh": f"{data}x{model}", "fsdp": fsdp,
      "remat_policy": remat_policy, "dtype": dtype,
      "vocab_size": cfg.vocab_size, "padded_vocab_size": cfg.padded_vocab_size,
      "embed_tokens_spec": [None if a is None else str(a) for a in embed_spec],
      "overrides": dict(overrides or {}),
      "parameters": int(sum(x.size for x in jax.tree.leaves(abstract.params))),
  }
  for name in ("params", "opt_state", "model_state"):
    out[f"{name}_bytes_per_device"] = shard_bytes(getattr(abstract, name),
                                                  getattr(state_sh, name))
  if not compile_step:
    return out

  batch_size = batch_size or data
  batch = bench_common.train_batch(cfg, batch_size=batch_size,
                                   text_length=text_length,
                                   decoder_length=decoder_length,
                                   image_size=image_size)
  compiled = bench_common.compile_abstract_train_step(
      OFAModel(cfg), tx, part, abstract, state_sh, batch)
  compiled["lower_s"] = round(compiled["lower_s"], 1)
  compiled["compile_s"] = round(compiled["compile_s"], 1)
  out.update(compiled)
  out.update(batch_size=batch_size, text_length=text_length,
             decoder_length=decoder_length, image_size=image_size)
  return out


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"


def main(argv: Optional[Sequence[str]] = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", required=True)
  ap.add_argument("--mesh", required=True, help="DATAxMODEL, e.g. 4x2")
  ap.add_argument("--fsdp", action="store_true",
                  help="also split parameters' embed axis over data")
  ap.add_argument("--remat_policy", default="none")
  ap.add_argument("--vocab_pad_multiple", type=int, default=128)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--batch_size", type=int, default=None,
                  help="global batch (default: one example per data shard)")
  ap.add_argument("--text_length", type=int, default=64)
  ap.add_argument("--decoder_length", type=int, default=32)
  ap.add_argument("--image_size", type=int, default=256)
  ap.add_argument("--override", action="append", default=[],
                  help="OFAConfig field NAME=VALUE (repeatable)")
  ap.add_argument("--optimize", action="store_true",
                  help="keep XLA's backend optimizations (slower compile)")
  ap.add_argument("--no_compile", action="store_true",
                  help="state bytes per device only (no lowering / compile)")
  ap.add_argument("--json", action="store_true", help="print one JSON line")
  args = ap.parse_args(argv)
  data, model = parse_mesh(args.mesh)
  setup_env(data * model, args.optimize)
  if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
  result = measure(args.preset, data, model, fsdp=args.fsdp,
                   remat_policy=args.remat_policy,
                   vocab_pad_multiple=args.vocab_pad_multiple, dtype=args.dtype,
                   batch_size=args.batch_size, text_length=args.text_length,
                   decoder_length=args.decoder_length,
                   image_size=args.image_size,
                   overrides=parse_overrides(args.override),
                   compile_step=not args.no_compile)
  if args.json:
    print(json.dumps(result))
    return
  print(f"{result['preset']} on mesh {result['mesh']} (data x model), "
        f"{result['parameters']:,} parameters, vocabulary "
        f"{result['vocab_size']} -> {result['padded_vocab_size']} rows "
        f"(embed_tokens {result['embed_tokens_spec']})")
  for key in ("params", "opt_state", "model_state"):
    print(f"  {key:<12} {_mib(result[key + '_bytes_per_device']):>14} per device")
  if args.no_compile:
    return
  print(f"  activations  {_mib(result['activation_bytes_per_device']):>14} per "
        "device (executable temporaries)")
  print(f"  arguments    {_mib(result['executable_argument_size_in_bytes']):>14}"
        f"  outputs {_mib(result['executable_output_size_in_bytes'])}")
  print(f"  lower {result['lower_s']} s, compile {result['compile_s']} s")


if __name__ == "__main__":
  main()
