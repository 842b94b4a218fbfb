"""Shared pieces of the benchmark sections: timing, the device peak, model setup.

Why these choices:
  * Medians of repeated runs after warm-up: the first call of a jitted function
    compiles, and a shared CPU has outliers in both directions; the median of a
    few runs is what a user sees in steady state. Compile time is reported on
    its own.
  * The peak is measured, not looked up: MFU on "this CPU" only means something
    against a matmul measured in the same process, dtype and load.
  * Random weights drawn on the host (`ofa_jax.model.testing`): compiling
    `model.init` for the base preset costs more than the step being measured,
    and speed does not depend on the weights' values.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import features as F

from ofa_jax.modalities import image_features
from ofa_jax.model import config as config_lib

Array = jax.Array


def block(tree: Any) -> Any:
  """Waits for every array of a pytree (so a timer measures the work)."""
  return jax.block_until_ready(tree)


def time_calls(fn: Callable[[], Any], *, warmup: int = 1,
               repeats: int = 3) -> dict[str, Any]:
  """Runs `fn` warmup + repeats times (it must block); seconds of the repeats."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times),
          "times_s": [round(t, 6) for t in times]}


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> dict[str, Any]:
  """Measured FLOP/s of an [n, n] x [n, n] matmul in `dtype` (the MFU denominator).

  Four chained products per call amortize the dispatch; the median call counts.
  """
  jdt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  rs = np.random.RandomState(0)
  a = jnp.asarray(rs.randn(n, n).astype(np.float32) / np.sqrt(n), jdt)
  b = jnp.asarray(rs.randn(n, n).astype(np.float32) / np.sqrt(n), jdt)

  @jax.jit
  def chain(x, y):
    for _ in range(4):
      x = jnp.dot(x, y, preferred_element_type=jdt)
    return x

  block(chain(a, b))
  t = time_calls(lambda: block(chain(a, b)), warmup=1, repeats=repeats)
  flops = 4 * 2 * n ** 3
  return {"dtype": dtype, "n": n, "flops_per_s": flops / t["median_s"],
          "best_flops_per_s": flops / t["min_s"], **t}


def machine_info() -> dict[str, Any]:
  """What the figures were measured on (device, cores, load) for the record."""
  try:
    load = os.getloadavg()
  except OSError:
    load = (float("nan"),) * 3
  dev = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
          "load_average": [round(x, 2) for x in load],
          "jax_version": jax.__version__,
          "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def make_config(preset: str, *, dtype: str, vocab_size: Optional[int] = None,
                dropout: Optional[float] = None, **overrides
                ) -> config_lib.OFAConfig:
  kw = dict(overrides, dtype=dtype)
  if vocab_size:
    kw["vocab_size"] = vocab_size
  if dropout is not None:
    kw["dropout"] = dropout
  return config_lib.get_config(preset, **kw)


def text_id_range(config: config_lib.OFAConfig) -> tuple[int, int]:
  """Ids of plain text tokens: after the specials, before codes and bins."""
  hi = config.vocab_size - config.num_codes - config.num_bins
  if hi <= 5:
    raise ValueError(f"vocab_size={config.vocab_size} leaves no text ids before "
                     f"{config.num_codes} codes + {config.num_bins} bins")
  return 4, hi


def train_batch(config: config_lib.OFAConfig, *, batch_size: int,
                text_length: int, decoder_length: int, image_size: int,
                num_images: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
  """A full model-feature batch (no pads) of the given static shapes."""
  rs = np.random.RandomState(seed)
  lo, hi = text_id_range(config)
  targets = rs.randint(lo, hi, (batch_size, decoder_length)).astype(np.int32)
  targets[:, -1] = F.EOS_ID
  dec_in = np.concatenate(
      [np.full((batch_size, 1), F.BOS_ID, np.int32), targets[:, :-1]], axis=1)
  batch = {
      F.ENCODER_INPUT_TOKENS: rs.randint(lo, hi, (batch_size, text_length)
                                         ).astype(np.int32),
      F.DECODER_INPUT_TOKENS: dec_in,
      F.DECODER_TARGET_TOKENS: targets,
      F.DECODER_LOSS_WEIGHTS: np.ones((batch_size, decoder_length), np.float32),
      F.DECODER_TARGET_KINDS: np.full((batch_size, decoder_length),
                                      int(F.TokenKind.TEXT), np.int32),
  }
  if num_images:
    batch[image_features.IMAGES] = rs.randn(
        batch_size, num_images, image_size, image_size, 3).astype(np.float32)
    batch[image_features.IMAGE_MASK] = np.ones((batch_size, num_images), np.int32)
  return batch


def random_variables(config: config_lib.OFAConfig,
                     batch: Mapping[str, Any]) -> dict:
  """Unboxed {params, batch_stats} of the config's shapes, drawn on the host."""
  from ofa_jax.model import testing  # pylint: disable=g-import-not-at-top
  small = {k: v[:1] for k, v in batch.items()}
  return testing.random_variables(config, small, scale=0.02)


def nbytes(tree: Any) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def compile_abstract_train_step(model: Any, tx: Any, part: Any, abstract: Any,
                                state_shardings: Any,
                                batch: Mapping[str, np.ndarray]
                                ) -> dict[str, Any]:
  """Lowers and compiles the trainer's step on abstract arguments (nothing is
  materialized) and returns the timings and XLA's memory analysis.

  Shared by the memory section (`bench_memory.py`) and
  `compile_at_scale.py`: both ask what one train step needs per device under
  a layout. Shardings as the trainer's: the state donated, the batch over
  `data`, metrics and per-example aux replicated.
  """
  from ofa_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  batch_abs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                       sharding=part.data_sharding)
               for k, v in batch.items()}
  state_abs = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, state_shardings)
  rng_abs = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                                 sharding=part.replicated)
  jitted = part.jit(ts.make_train_step(model, tx),
                    in_shardings=(state_shardings,
                                  part.batch_shardings(batch_abs),
                                  part.replicated),
                    out_shardings=(state_shardings, part.replicated,
                                   part.replicated),
                    donate_argnums=(0,))
  out: dict[str, Any] = {}
  t0 = time.perf_counter()
  lowered = jitted.lower(state_abs, batch_abs, rng_abs)
  out["lower_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  out["compile_s"] = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  for key in ("argument_size_in_bytes", "output_size_in_bytes",
              "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes"):
    out["executable_" + key] = int(getattr(mem, key, 0) or 0)
  out["activation_bytes_per_device"] = out["executable_temp_size_in_bytes"]
  return out
