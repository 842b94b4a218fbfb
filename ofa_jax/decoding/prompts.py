"""Forced decoder prompts: what they are, how much room they need, and removing them.

A target may start with tokens the model is given rather than asked for: plain
target text (`-> the answer is [TEXT:a]`) or a `no_loss` slot. Decoding forces
them, then decodes the answer after them. Why one module: which tokens are the
prompt (the explicit `decoder_prompt_mask`, else the leading non-pad targets of
loss weight 0), the room the decode buffer keeps for them, and stripping them
from the output were read in six places with two rules, and an example of sample
weight 0 (all weights 0) was misread as all prompt.

Host functions (numpy, text) import no JAX, so the data side may use them; the
device functions import `jax.numpy` when called.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from ofa_jax import features as F


# ---------------------------------------------------------------------------
# Device side (jit-able).
# ---------------------------------------------------------------------------
def has_prompt(batch: Mapping[str, Any]) -> bool:
  """True when the batch carries decoder targets that may start with a prompt."""
  return F.DECODER_TARGET_TOKENS in batch and (
      F.DECODER_PROMPT_MASK in batch or F.DECODER_LOSS_WEIGHTS in batch)


def prompt_weights(batch: Mapping[str, Any]):
  """float32 [B, Lo] weights whose leading zeros over non-pad targets are the prompt.

  The explicit `decoder_prompt_mask` wins; `decoder_loss_weights` alone misread
  an example of sample weight 0 as all prompt.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if F.DECODER_PROMPT_MASK in batch:
    mask = jnp.asarray(batch[F.DECODER_PROMPT_MASK])
    return jnp.where(mask > 0, 0.0, 1.0).astype(jnp.float32)
  return jnp.asarray(batch[F.DECODER_LOSS_WEIGHTS], jnp.float32)


def batch_prompt(batch: Mapping[str, Any], length: Optional[int] = None):
  """(tokens int32 [B, length], lengths int32 [B]) of the batch's forced prompts.

  Tokens are the decoder targets (only positions < lengths are read), cut or
  padded to `length` (default: the target length); a batch without targets has
  empty prompts.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if not has_prompt(batch):
    rows = next(iter(batch.values())).shape[0]
    width = 0 if length is None else length
    return (jnp.full((rows, width), F.PAD_ID, jnp.int32),
            jnp.zeros((rows,), jnp.int32))
  targets = jnp.asarray(batch[F.DECODER_TARGET_TOKENS], jnp.int32)
  is_prompt = (targets != F.PAD_ID) & (prompt_weights(batch) == 0)
  lengths = jnp.sum(jnp.cumprod(is_prompt.astype(jnp.int32), axis=1), axis=1)
  lengths = lengths.astype(jnp.int32)
  if length is None:
    return targets, lengths
  lo = targets.shape[1]
  if lo >= length:
    targets = targets[:, :length]
  else:
    targets = jnp.pad(targets, ((0, 0), (0, length - lo)),
                      constant_values=F.PAD_ID)
  return targets, jnp.minimum(lengths, length)


def prompt_rows(tokens: Any, lengths: Any, batch_size: int, length: int,
                rows_per_example: int):
  """Per decoded row (tokens [B*n, L], lengths [B*n]) of the forced prompts.

  None for both: no prompt. Rows of one example are adjacent (example-major),
  as the decoding loops lay them out.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  b, n = batch_size, rows_per_example
  if tokens is None:
    if lengths is not None:
      raise ValueError("forced_lengths was given without forced_tokens")
    return (jnp.full((b * n, length), F.PAD_ID, jnp.int32),
            jnp.zeros((b * n,), jnp.int32))
  if tuple(tokens.shape) != (b, length):
    raise ValueError(f"forced_tokens has shape {tuple(tokens.shape)}; expected "
                     f"[batch_size={b}, max_decode_len={length}]")
  if lengths is None:
    raise ValueError("forced_tokens was given without forced_lengths")
  return (jnp.repeat(jnp.asarray(tokens, jnp.int32), n, axis=0),
          jnp.repeat(jnp.asarray(lengths, jnp.int32), n, axis=0))


def buffer_length(spec: Any, batch: Mapping[str, Any],
                  max_positions: Optional[int] = None) -> int:
  """Static decode length: prompt room + the spec's free positions.

  The room is the spec's `max_prompt_len`, else the batch's whole target length
  when it may carry a prompt (0 otherwise). Without `max_len` the target length
  bounds everything.
  """
  targets = batch.get(F.DECODER_TARGET_TOKENS)
  if spec.max_free_len is None:
    if targets is None:
      raise ValueError("predict_batch: give max_len or a batch with "
                       f"{F.DECODER_TARGET_TOKENS!r}")
    return int(targets.shape[1])
  room = spec.max_prompt_len
  if room is None:
    room = int(targets.shape[1]) if has_prompt(batch) else 0
  length = int(room) + spec.max_free_len
  if max_positions is not None and length > max_positions:
    raise ValueError(
        f"predict_batch: a decode buffer of {room} prompt + {spec.max_free_len} "
        f"free positions exceeds max_target_positions={max_positions}; set "
        "max_prompt_len (0 for tasks without a decoder prompt) or a smaller "
        "max_len")
  return length


# ---------------------------------------------------------------------------
# Host side (numpy, text).
# ---------------------------------------------------------------------------
def row_prompt_length(row: Mapping[str, Any]) -> int:
  """Prompt length of one example of model features (no batch axis)."""
  if F.DECODER_PROMPT_MASK in row:  # explicit (a sample weight of 0 is no prompt)
    return int(np.asarray(row[F.DECODER_PROMPT_MASK]).sum())
  if F.DECODER_TARGET_TOKENS not in row or F.DECODER_LOSS_WEIGHTS not in row:
    return 0
  targets = np.asarray(row[F.DECODER_TARGET_TOKENS]).reshape(-1)
  weights = np.asarray(row[F.DECODER_LOSS_WEIGHTS]).reshape(-1)
  is_prompt = (targets != F.PAD_ID) & (weights == 0)
  return int(np.argmin(is_prompt)) if not is_prompt.all() else len(is_prompt)


def with_prompt_room(spec: Any, rows_fn: Callable[[], Iterable[
    Mapping[str, Any]]]) -> Any:
  """The spec with `max_prompt_len` set to the longest prompt of the rows.

  Why: the decode buffer holds the forced prompt plus the free tokens; when the
  plan cannot know the prompt length (a `no_loss` slot), the model would reserve
  the whole target length, which wastes positions and can exceed the position
  table. Specs that already know their room, or have no `max_len`, are kept.
  """
  if spec.max_len is None or spec.max_prompt_len is not None:
    return spec
  room = max((row_prompt_length(r) for r in rows_fn()), default=0)
  return spec.replace(max_prompt_len=room)


def answer_tokens(tokens: Any, prompt_lengths: Any = None,
                  eos_id: int = F.EOS_ID) -> list:
  """The free tokens of each decoded row, prompt and `</s>` removed.

  tokens [B, L] (or [B, K, L]) as the decoders return them; prompt_lengths [B].
  Returns nested lists of ints with the same leading axes.
  """
  arr = np.asarray(tokens)
  plen = (np.zeros(arr.shape[0], np.int64) if prompt_lengths is None
          else np.asarray(prompt_lengths))

  def one(row, start):
    row = [int(x) for x in row[int(start):]]
    return row[:row.index(eos_id)] if eos_id in row else row

  if arr.ndim == 2:
    return [one(r, p) for r, p in zip(arr, plen)]
  if arr.ndim == 3:
    return [[one(r, p) for r in rows] for rows, p in zip(arr, plen)]
  raise ValueError(f"answer_tokens: tokens must be [B, L] or [B, K, L], got "
                   f"shape {arr.shape}")


def prompt_text(example: Optional[Mapping[str, Any]], vocab: Any) -> str:
  """The forced prompt of an example of task features, as text.

  Task features carry `target_loss_mask`: the prompt is the targets before the
  first trained token.
  """
  if not example or F.TARGETS not in example or F.TARGET_LOSS_MASK not in example:
    return ""
  mask = np.asarray(example[F.TARGET_LOSS_MASK]).reshape(-1)
  n = int(np.argmax(mask > 0)) if np.any(mask > 0) else len(mask)
  targets = np.asarray(example[F.TARGETS]).reshape(-1)[:n]
  return vocab.decode(targets.tolist()).strip() if n else ""


def answer_text(decoded: str, example: Optional[Mapping[str, Any]],
                vocab: Any) -> str:
  """Decoded output text without the example's forced prompt."""
  text = decoded.strip()
  prompt = prompt_text(example, vocab)
  if prompt and text.startswith(prompt):
    return text[len(prompt):].strip()
  return text
