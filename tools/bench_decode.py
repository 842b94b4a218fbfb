"""Benchmark section `decode`: tokens/s of greedy and beam search, cached vs uncached.

Each case is one jitted `OFAModel.predict_batch` (encoder once, then the
`lax.while_loop` of `ofa_jax/decoding.py`). Cached: one position per step
against the KV cache. Uncached: the decoder reruns over the whole buffer every
step (`DecodingSpec(use_cache=False)`), as OFA's fairseq generator does.

To make every run decode exactly `length` tokens, `</s>` is banned until the last
position (`min_len = length - 1`): with random weights a row could otherwise end
at step 1 and the figure would measure nothing. tokens/s counts generated
positions per example (a beam of 5 does 5x the work for the same count), and the
time includes the encoder pass (the same in both modes).

Image generation decodes `codes` VQ codes (kind "image_codes", code positions,
code-only ids); the config's code grid is sized to hold them.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional, Sequence

import jax

from ofa_jax import features as F

from ofa_jax.modalities import image_features
from ofa_jax.decoding.spec import DecodingSpec
from ofa_jax.models import OFAModel
from tools import bench_common as common


def _case(model: OFAModel, variables, batch, spec: DecodingSpec,
          *, repeats: int) -> dict[str, Any]:
  fn = jax.jit(lambda v, b: model.predict_batch(v, b, decoding=spec))
  t0 = time.perf_counter()
  compiled = fn.lower(variables, batch).compile()
  compile_s = time.perf_counter() - t0
  t = common.time_calls(lambda: common.block(compiled(variables, batch)),
                        warmup=1, repeats=repeats)
  b = batch[F.ENCODER_INPUT_TOKENS].shape[0]
  return {"compile_s": compile_s, **t,
          "tokens_per_s": b * spec.max_free_len / t["median_s"]}


def _encode_time(model: OFAModel, variables, batch, *, repeats: int) -> float:
  """Median seconds of the encoder pass alone (in every decode's time)."""
  module = model.module
  fn = jax.jit(lambda v, b: module.apply(v, b, train=False,
                                         method=module.encode))
  return common.time_calls(lambda: common.block(fn(variables, batch)),
                           warmup=1, repeats=repeats)["median_s"]


def _batch(cfg, batch_size: int, text_length: int, image_size: int):
  full = common.train_batch(cfg, batch_size=batch_size, text_length=text_length,
                            decoder_length=2, image_size=image_size)
  keep = (F.ENCODER_INPUT_TOKENS, image_features.IMAGES, image_features.IMAGE_MASK)
  return {k: full[k] for k in keep if k in full}, full


def run_lengths(*, preset: str, lengths: Sequence[int], kind: str,
                batch_size: int, text_length: int, image_size: int,
                dtype: str = "float32", vocab_size: Optional[int] = None,
                beam_size: int = 5, repeats: int = 3,
                uncached_max_length: Optional[int] = None,
                config_overrides: Optional[dict] = None) -> list[dict[str, Any]]:
  """One row per (length, method, cache); uncached only up to uncached_max_length."""
  overrides = dict(config_overrides or {}, dropout=0.0)
  longest = max(lengths)
  if kind == "image_codes":
    grid = math.isqrt(longest)
    if grid * grid < longest:
      grid += 1
    overrides.setdefault("code_image_size", 8 * grid)
  base = common.make_config(preset, dtype=dtype, vocab_size=vocab_size,
                            **overrides)
  if longest + 2 > base.max_target_positions:
    overrides["max_target_positions"] = longest + 2
  cfg = common.make_config(preset, dtype=dtype, vocab_size=vocab_size,
                           **overrides)
  batch, full = _batch(cfg, batch_size, text_length, image_size)
  variables = common.random_variables(cfg, full)
  model = OFAModel(cfg)
  enc = _encode_time(model, variables, batch, repeats=repeats)
  rows = []
  for length in lengths:
    for method, beams in (("greedy", 1), ("beam", beam_size)):
      for use_cache in (True, False):
        if not use_cache and uncached_max_length is not None and (
            length > uncached_max_length):
          continue
        # `length` positions: text is length - 1 tokens then `</s>`; image
        # generation `length` codes, then `</s>`.
        free = length if kind == "image_codes" else length - 1
        spec = DecodingSpec(kind=kind, method=method, beam_size=beams,
                            max_len=free, min_len=free, max_prompt_len=0,
                            use_cache=use_cache)
        max_len = spec.max_free_len
        res = _case(model, variables, batch, spec, repeats=repeats)
        loop_s = max(res["median_s"] - enc, 1e-9)
        res["encoder_s"] = enc
        res["loop_tokens_per_s"] = batch_size * max_len / loop_s
        rows.append({"preset": preset, "kind": kind, "length": length,
                     "method": method, "beam_size": beams,
                     "cached": use_cache, "batch_size": batch_size, **res})
        # Progress on stderr: long runs on a shared host should not be silent.
        print(f"decode {preset} {kind} {length} {method} cached={use_cache}: "
              f"{res['tokens_per_s']:.1f} tokens/s", file=sys.stderr,
              flush=True)
  return rows


def speedups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """cached / uncached tokens/s for every (kind, length, method) measured both ways."""
  index = {(r["kind"], r["length"], r["method"], r["cached"]): r for r in rows}
  out = []
  for (kind, length, method, cached), r in sorted(index.items()):
    other = index.get((kind, length, method, False))
    if cached and other is not None:
      out.append({"kind": kind, "length": length, "method": method,
                  "cached_over_uncached": r["tokens_per_s"] /
                                          other["tokens_per_s"],
                  "loop_cached_over_uncached": r["loop_tokens_per_s"] /
                                               other["loop_tokens_per_s"]})
  return out
