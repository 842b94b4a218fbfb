"""Interleave adapter outputs with text tokens in instruction order, statically.

Why: the encoder sequence follows the instruction ("[IMAGE] what is in
[TEXT]?" puts patches first, "[TEXT] compare [IMAGE:a] and [IMAGE:b]" puts
them after some text), but shapes must stay static. The data side tells, per
non-token slot, how many text tokens precede it (`*_text_offset`) and its index
among the non-token slots (`*_slot_rank`); the number of encoder positions a
slot takes is only known here (ResNet stride, audio subsampling).

The source sequence is `[text (Li) ; slot_0 (n_0) ; slot_1 (n_1) ; ...]`. Each
element gets a destination:
  - present slot k: offset_k + Σ n_j over present slots j of lower rank;
  - text token t:   t + Σ n_k over present slots k with offset_k <= t;
  - absent slot k (mask all False): after everything, in source order.
That is a permutation when ranks of present slots are distinct and consistent
with their offsets (`check_placement` verifies it on the host); the encoder
gathers every per-element stream with its inverse. With one image at offset 0,
rank 0 this is exactly OFA's `[image ; text]`. Absent slots and text padding
are masked keys, so where they sit does not change any real output.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def destinations(text_len: int, slot_sizes: Sequence[int], offsets: Array,
                 ranks: Array, present: Array) -> Array:
  """int32 [B, Li + Σn]: the destination of every source element.

  Args:
    text_len: Li, the (padded) number of text tokens.
    slot_sizes: static n_k of every slot (all streams, flattened).
    offsets, ranks: int32 [B, K] placement of every slot.
    present: bool [B, K], False for absent slots.
  """
  sizes = jnp.asarray(np.asarray(slot_sizes, np.int32))
  num_slots = len(slot_sizes)
  b = offsets.shape[0]
  if offsets.shape != (b, num_slots) or ranks.shape != (b, num_slots):
    raise ValueError(f"Slot placement has shapes {offsets.shape} / "
                     f"{ranks.shape}; expected {(b, num_slots)} for slot sizes "
                     f"{list(slot_sizes)}")
  offsets = jnp.clip(offsets.astype(jnp.int32), 0, text_len)
  ranks = ranks.astype(jnp.int32)
  present_sizes = jnp.where(present, sizes[None, :], 0)  # [B, K]
  # Present slot k: sizes of present slots of lower rank.
  lower = ranks[:, None, :] < ranks[:, :, None]  # [B, k, j]
  before = jnp.sum(jnp.where(lower, present_sizes[:, None, :], 0), axis=-1)
  base_present = offsets + before
  # Absent slots go after all real entries, in source order.
  total_present = jnp.sum(present_sizes, axis=-1, keepdims=True)
  absent_sizes = jnp.where(present, 0, sizes[None, :])
  absent_before = jnp.cumsum(absent_sizes, axis=-1) - absent_sizes
  base_absent = text_len + total_present + absent_before
  base = jnp.where(present, base_present, base_absent)  # [B, K]
  # Text token t: shifted by every present slot placed at or before it.
  t = jnp.arange(text_len, dtype=jnp.int32)
  shift = jnp.sum(jnp.where(offsets[:, None, :] <= t[None, :, None],
                            present_sizes[:, None, :], 0), axis=-1)
  parts = [t[None, :] + shift]
  for k, n in enumerate(slot_sizes):
    parts.append(base[:, k:k + 1] + jnp.arange(n, dtype=jnp.int32)[None, :])
  return jnp.concatenate(parts, axis=1)


def gather_index(dest: Array) -> Array:
  """int32 [B, L]: the source element that lands at each destination."""
  b, length = dest.shape
  src = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  rows = jnp.arange(b)[:, None]
  return jnp.zeros((b, length), jnp.int32).at[rows, dest].set(src)


def apply(index: Array, x: Array) -> Array:
  """Gather x [B, L, ...] along axis 1 with index [B, L]."""
  idx = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def check_placement(text_len, slot_sizes: Sequence[int], offsets, ranks,
                    present, where: str = "batch") -> None:
  """Host-side check (numpy) that the placement is a valid interleaving.

  Raises ValueError naming the example and slot when an offset is outside
  [0, text_len], two present slots share a rank, or ranks contradict offsets.
  Inside jit nothing can raise, so the feature converter / tests call this.
  """
  offsets = np.asarray(offsets)
  ranks = np.asarray(ranks)
  present = np.asarray(present).astype(bool)
  for i in range(offsets.shape[0]):
    slots = [k for k in range(len(slot_sizes)) if present[i, k]]
    for k in slots:
      if not 0 <= offsets[i, k] <= text_len:
        raise ValueError(f"{where}: example {i}, slot {k}: text offset "
                         f"{offsets[i, k]} outside [0, {text_len}]")
    by_rank = sorted(slots, key=lambda k: ranks[i, k])
    for a, c in zip(by_rank, by_rank[1:]):
      if ranks[i, a] == ranks[i, c]:
        raise ValueError(f"{where}: example {i}: slots {a} and {c} share slot "
                         f"rank {ranks[i, a]}")
      if offsets[i, a] > offsets[i, c]:
        raise ValueError(f"{where}: example {i}: slot {a} (rank {ranks[i, a]}, "
                         f"offset {offsets[i, a]}) comes after slot {c} (rank "
                         f"{ranks[i, c]}, offset {offsets[i, c]})")
