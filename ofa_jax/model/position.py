"""OFA's relative-position buckets and position ids, as small static tables.

Why not OFA's (max_len × max_len) index matrices: the text bucket depends only on
the offset q − k, so a 1-D table of 2·max−1 entries indexed by the offset
replaces the 1024×1024 matrix; the 2-D image bucket is integer arithmetic on the
patch rows and columns, so the (42²+1)² matrix is never materialized. Both give
exactly OFA's indices (`make_token_bucket_position`,
`make_image_bucket_position` in models/ofa/unify_transformer.py): the text
table reproduces the float32 log arithmetic of the reference.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# OFA's decoder pads its code-position list with this id (a fixed literal in the
# reference, whatever the bucket size).
CODE_POSITION_FILL = 1024


def num_text_buckets(bucket_size: int) -> int:
  """511 for OFA's bucket size 256."""
  return 2 * bucket_size - 1


def num_image_buckets(bucket_size: int) -> int:
  """(2·42−1)² + 3 = 6892 for OFA's bucket size 42 (3 special entries for id 0)."""
  return (2 * bucket_size - 1) ** 2 + 3


def num_image_positions(bucket_size: int) -> int:
  """Rows of `embed_image_positions`: a 42×42 grid plus id 0."""
  return bucket_size ** 2 + 1


def text_bucket_by_offset(bucket_size: int, max_position: int) -> np.ndarray:
  """int32 [2·max_position − 1]: the text bucket of offset r = q − k at r + max − 1.

  Offsets with |r| <= bucket_size // 2 keep their value; larger ones are
  log-compressed. Computed in float32 like the PyTorch reference so that the
  ceil() boundaries agree.
  """
  mid = bucket_size // 2
  rel = np.arange(-(max_position - 1), max_position, dtype=np.int64)
  sign = np.sign(rel)
  abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
  ratio = (abs_pos.astype(np.float32) / np.float32(mid)).astype(np.float32)
  log_pos = np.log(ratio).astype(np.float32)
  log_pos = log_pos / np.float32(math.log((max_position - 1) / mid))
  log_pos = np.ceil((log_pos * np.float32(mid - 1)).astype(np.float32)) + mid
  bucket = np.where(abs_pos <= mid, rel, log_pos.astype(np.int64) * sign)
  return (bucket + bucket_size - 1).astype(np.int32)


def text_rel_bucket(q_pos: jnp.ndarray, k_pos: jnp.ndarray, bucket_size: int,
                    max_position: int) -> jnp.ndarray:
  """Text buckets for all (q, k) pairs: [..., Lq] × [..., Lk] -> [..., Lq, Lk].

  Positions are text-token indices (0-based); offsets beyond the table are
  clipped to its ends (they already share the last log bucket).
  """
  table = jnp.asarray(text_bucket_by_offset(bucket_size, max_position))
  offset = q_pos[..., :, None] - k_pos[..., None, :]
  index = jnp.clip(offset + max_position - 1, 0, 2 * max_position - 2)
  return table[index]


def image_position_ids(height: int, width: int, bucket_size: int) -> np.ndarray:
  """int32 [h·w]: row-major patch ids `col + row·bucket_size + 1` (0 is reserved)."""
  if height > bucket_size or width > bucket_size:
    raise ValueError(f"A {height}x{width} patch grid exceeds image_bucket_size="
                     f"{bucket_size}: OFA addresses at most {bucket_size}x"
                     f"{bucket_size} patches (image side <= {16 * bucket_size} px)")
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return (cols + rows * bucket_size + 1).reshape(-1).astype(np.int32)


def image_rel_bucket(q_ids: jnp.ndarray, k_ids: jnp.ndarray,
                     bucket_size: int) -> jnp.ndarray:
  """2-D image buckets for all pairs of patch ids: [..., Lq] × [..., Lk] -> [..., Lq, Lk].

  Ids follow `image_position_ids`; id 0 (the decoder's `<s>`) takes the three
  special entries at the end of the table exactly as the reference does.
  """
  num = num_image_buckets(bucket_size)
  q = q_ids[..., :, None]
  k = k_ids[..., None, :]
  dy = (q - 1) // bucket_size - (k - 1) // bucket_size
  dx = (q - 1) % bucket_size - (k - 1) % bucket_size
  bucket = (dy + bucket_size - 1) * (2 * bucket_size - 1) + dx + bucket_size - 1
  bucket = jnp.where(q == 0, num - 3, bucket)
  bucket = jnp.where(k == 0, num - 2, bucket)
  bucket = jnp.where((q == 0) & (k == 0), num - 1, bucket)
  return bucket.astype(jnp.int32)


def code_position_ids(code_grid_size: int, length: int,
                      bucket_size: int) -> np.ndarray:
  """int32 [length]: image ids of decoder positions when the target is VQ codes.

  `<s>` gets id 0, then the code grid row-major, then OFA's fixed filler id.
  """
  grid = image_position_ids(code_grid_size, code_grid_size, bucket_size)
  fill = min(CODE_POSITION_FILL, num_image_positions(bucket_size) - 1)
  ids = np.concatenate([[0], grid, np.full(max(length, 1), fill)])
  return ids[:length].astype(np.int32)


def combined_rel_index(text_bucket: jnp.ndarray, text_pair: jnp.ndarray,
                       image_bucket: jnp.ndarray, image_pair: jnp.ndarray,
                       token_bucket_size: int,
                       image_bucket_size: int) -> jnp.ndarray:
  """One int32 index per (q, k) pair into [text table ; image table ; zero row].

  Why one index: each layer then gathers its whole relative bias with a single
  `take` (`layers.rel_bias`), and pairs that OFA gives no relative bias (image ×
  text, different images, cross-modal) point at the zero row.
  """
  n_text = num_text_buckets(token_bucket_size)
  none = n_text + num_image_buckets(image_bucket_size)
  index = jnp.where(text_pair, text_bucket, none)
  index = jnp.where(image_pair, image_bucket + n_text, index)
  return index.astype(jnp.int32)
