"""Temperature / top-k / top-p sampling and greedy decoding, under the same rules.

Why alongside beam search rather than inside it: sampling has no beams to reorder,
so the carry is simpler; but it must obey exactly the same rules (forced prompt,
constraints, min_len, no-repeat n-gram, pad never emitted, `</s>` at the last
position), which come from `decoding.step_log_probs`. OFA's text-to-image
generation is this loop with top-k 256 and an image-code constraint.

Greedy decoding is the `top_k=1` case; it equals beam search with one beam.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from ofa_jax.decoding import search as decoding
from ofa_jax.decoding import constraints as dc
from ofa_jax.decoding import prompts

PyTree = Any
NEG_INF = decoding.NEG_INF


def filter_top_k(lp: jax.Array, top_k: int) -> jax.Array:
  """Keeps the `top_k` best ids per row (ties at the threshold are kept)."""
  if top_k <= 0 or top_k >= lp.shape[-1]:
    return lp
  kth = decoding.top_k(lp, top_k)[0][:, -1:]
  return jnp.where(lp < kth, NEG_INF, lp)


def filter_top_p(lp: jax.Array, top_p: float) -> jax.Array:
  """Keeps the smallest set of best ids whose probability reaches `top_p`."""
  if top_p >= 1.0:
    return lp
  if top_p <= 0.0:
    raise ValueError(f"top_p={top_p} must be in (0, 1]")
  sorted_lp = jnp.sort(lp, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(sorted_lp, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each id
  keep = before < top_p  # always keeps the best id
  thresh = jnp.min(jnp.where(keep, sorted_lp, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(lp < thresh, NEG_INF, lp)


@flax.struct.dataclass
class _SampleCarry:
  t: jax.Array
  seqs: jax.Array  # int32 [R, L+1]
  scores: jax.Array  # f32 [R]
  done: jax.Array  # bool [R]
  cache: PyTree
  cstates: tuple


def temperature_sample(tokens_to_logits: decoding.TokensToLogits,
                       init_cache: PyTree, rng: Optional[jax.Array], *,
                       batch_size: int, max_decode_len: int, num_samples: int = 1,
                       temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0,
                       forced_tokens: Optional[jax.Array] = None,
                       forced_lengths: Optional[jax.Array] = None,
                       rules: decoding.DecodingRules = decoding.DecodingRules()
                       ) -> tuple[jax.Array, jax.Array]:
  """Samples `num_samples` continuations per example.

  The temperature divides the logits before the constraints and the log-softmax
  (fairseq's order); top-k then top-p truncate the resulting distribution.
  `top_k=1` (or `temperature=0`) is greedy and needs no rng.

  Args:
    tokens_to_logits: the step callback.
    init_cache: cache for batch_size * num_samples rows (see `expand_rows`).
    rng: a PRNG key (None only when greedy).
    batch_size, max_decode_len, num_samples: static sizes.
    temperature, top_k, top_p: sampling settings (static).
    forced_tokens, forced_lengths, rules: as in `decoding.beam_search`.

  Returns:
    tokens int32 [B, num_samples, L] and scores float32 [B, num_samples]: the
    summed log-probs of the free tokens under the rule-masked, tempered
    distribution (before top-k / top-p truncation); -inf for a row that hit a
    step where nothing was allowed.
  """
  b, n, length = batch_size, num_samples, max_decode_len
  if n < 1 or length < 1:
    raise ValueError(f"temperature_sample: num_samples={n} and "
                     f"max_decode_len={length} must be >= 1")
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0")
  greedy = top_k == 1 or temperature == 0.0
  if not greedy and rng is None:
    raise ValueError("temperature_sample needs an rng unless it is greedy "
                     "(top_k=1 or temperature=0)")
  rows = b * n
  f_tok, f_len = prompts.prompt_rows(forced_tokens, forced_lengths, b, length,
                                     n)
  seqs0 = jnp.full((rows, length + 1), rules.pad_id, jnp.int32)
  seqs0 = seqs0.at[:, 0].set(rules.bos_id)
  carry0 = _SampleCarry(
      t=jnp.array(0, jnp.int32), seqs=seqs0, scores=jnp.zeros((rows,), jnp.float32),
      done=jnp.zeros((rows,), bool), cache=init_cache,
      cstates=dc.init_states(rules.constraints, rows))

  def cond(c: _SampleCarry) -> jax.Array:
    return (c.t < length) & ~jnp.all(c.done)

  def body(c: _SampleCarry) -> _SampleCarry:
    t = c.t
    seqs_in = c.seqs[:, :length]
    state = decoding.DecodingState(cur_index=t, sequences=seqs_in,
                                   cur_token=jnp.take(seqs_in, t, axis=1),
                                   cache=c.cache)
    logits, new_cache = tokens_to_logits(state)
    free_step = t - f_len
    lp = decoding.step_log_probs(
        logits, state, rules=rules, cstates=c.cstates, free_step=free_step,
        forced_token=jnp.take(f_tok, t, axis=1), max_len=length,
        temperature=1.0 if greedy else temperature)
    if greedy:
      tok = jnp.argmax(lp, axis=-1)
    else:
      filt = filter_top_p(filter_top_k(lp, top_k), top_p)
      tok = jax.random.categorical(jax.random.fold_in(rng, t), filt, axis=-1)
    tok = tok.astype(jnp.int32)
    tok_lp = jnp.take_along_axis(lp, tok[:, None], axis=1)[:, 0]
    dead = tok_lp == NEG_INF  # nothing was allowed: stop the row at -inf
    tok = jnp.where(dead, rules.eos_id, tok)
    tok = jnp.where(c.done, rules.pad_id, tok)
    is_free = (free_step >= 0) & ~c.done
    scores = c.scores + jnp.where(is_free, tok_lp, 0.0)
    done = c.done | (is_free & ((tok == rules.eos_id) | dead))
    cstates = dc.update_states(rules.constraints, c.cstates, tok, free_step)
    return _SampleCarry(t=t + 1, seqs=c.seqs.at[:, t + 1].set(tok), scores=scores,
                        done=done, cache=new_cache, cstates=cstates)

  c = jax.lax.while_loop(cond, body, carry0)
  return (c.seqs[:, 1:].reshape(b, n, length), c.scores.reshape(b, n))


def greedy_search(tokens_to_logits: decoding.TokensToLogits, init_cache: PyTree, *,
                  batch_size: int, max_decode_len: int,
                  forced_tokens: Optional[jax.Array] = None,
                  forced_lengths: Optional[jax.Array] = None,
                  rules: decoding.DecodingRules = decoding.DecodingRules()
                  ) -> tuple[jax.Array, jax.Array]:
  """Argmax decoding: tokens [B, L] and summed free log-probs [B]."""
  tokens, scores = temperature_sample(
      tokens_to_logits, init_cache, None, batch_size=batch_size,
      max_decode_len=max_decode_len, num_samples=1, top_k=1,
      forced_tokens=forced_tokens, forced_lengths=forced_lengths, rules=rules)
  return tokens[:, 0], scores[:, 0]
