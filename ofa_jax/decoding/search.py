"""Compiled autoregressive decoding: beam search over a KV cache, with OFA's rules.

Why our own loop: OFA's fairseq generator recomputes the whole decoder prefix at
every step, with dynamic shapes. Here everything is one `lax.while_loop` with
static shapes, driven by a `tokens_to_logits(DecodingState) -> (logits, cache)`
callback (t5x's contract). With a cached callback a step costs one position; an
uncached callback (a full forward over `state.sequences`, reading the row at
`state.cur_index`) gives the fairseq behaviour for comparisons and benchmarks.
The loops never look at the cache except to reorder its rows by beam.

Layout. A decode of length L fills `tokens` [B, K, L] in the decoder-target
format: the forced prompt (a per-example prefix), the free tokens, `</s>`, then
`<pad>`. At step t the decoder input is `sequences[:, t]` (`<s>` at t=0, else the
token emitted at t-1) and the logits predict `tokens[:, t]`.

Rules, as in OFA's generator (`docs/ofa_architecture.md` §5): constraints (id ranges,
tries, `logits_processor`) act on the logits before the log-softmax; then `<pad>`
is never emitted, `</s>` is banned before `min_len` free tokens, repeated n-grams
are banned, and the last position only admits `</s>`. Forced prompt tokens
contribute nothing to scores, lengths or `min_len`. Beam scores are fairseq's:
summed log-probs over free tokens (including `</s>`) / free_len ** length_penalty.

Sampling and greedy decoding live in `ofa_jax/decoding/sampling.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp

from ofa_jax import features
from ofa_jax.decoding import constraints as dc
from ofa_jax.decoding import prompts

PyTree = Any
NEG_INF = float("-inf")


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at one step.

  Attributes:
    cur_index: int32 [] position of `cur_token` in `sequences` (the step).
    sequences: int32 [rows, L] decoder inputs: `<s>`, then the tokens emitted so
      far; positions after `cur_index` hold `<pad>` (an uncached callback runs the
      causal decoder over all of it and keeps row `cur_index`).
    cur_token: int32 [rows] = sequences[:, cur_index].
    cache: the callback's cache (a pytree whose batch-leading leaves have `rows`
      rows; reordered by beam between steps).
  """

  cur_index: jax.Array
  sequences: jax.Array
  cur_token: jax.Array
  cache: PyTree


TokensToLogits = Callable[[DecodingState], tuple[jax.Array, PyTree]]
LogitsProcessor = Callable[[jax.Array, DecodingState, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class DecodingRules:
  """Static rules shared by beam search and sampling (see the module docstring).

  Hashed by identity (constraints may hold arrays), so it can be a static jit
  argument; close over it otherwise.

  Attributes:
    eos_id / pad_id / bos_id: special ids.
    min_len: `</s>` is banned until this many free tokens were emitted.
    max_free_len: at most this many free tokens, `</s>` included (None: only
      the buffer length L bounds them). Lets one static L serve prompts of any
      length: L = longest prompt + max_free_len.
    no_repeat_ngram_size: ban any n-gram of this size from occurring twice in a
      row's decoder inputs (`<s>`, prompt and free tokens); 0 disables.
    constraints: `decoding_constraints.Constraint`s, AND-ed.
    logits_processor: optional `fn(logits, state, free_step) -> logits`, applied
      first, before the constraints (e.g. a custom bias).
  """

  eos_id: int = features.EOS_ID
  pad_id: int = features.PAD_ID
  bos_id: int = features.BOS_ID
  min_len: int = 0
  max_free_len: Optional[int] = None
  no_repeat_ngram_size: int = 0
  constraints: Sequence[dc.Constraint] = ()
  logits_processor: Optional[LogitsProcessor] = None


# ---------------------------------------------------------------------------
# Helpers shared with sampling and the model interface.
# ---------------------------------------------------------------------------
def top_k(x: jax.Array, k: int, block: int = 1024
          ) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k` over the last axis, by blocks: fast inside a decoding loop.

  Why: inside a `while_loop` body, XLA:CPU lowers `lax.top_k` over the K x V
  beam candidates to a full stable sort (measured: 65 ms of a 104 ms beam step,
  base preset, 59457 ids), where outside a loop it is a 0.4 ms TopK call. The k
  best entries all lie in the k blocks with the largest maxima, so one max
  per block, a top-k over the block maxima and a top-k over the k chosen
  blocks (k x block entries) give the same values and indices for every entry
  above the k-th value; ties at -inf (dead or banned candidates) may pick
  other -inf indices than `lax.top_k`.

  Returns (values, indices) like `jax.lax.top_k`.
  """
  n = x.shape[-1]
  if n <= 4 * block or k >= n // block:
    return jax.lax.top_k(x, k)
  lead = x.shape[:-1]
  pad = (-n) % block
  if pad:  # padded entries carry the highest indices: never chosen before real ones
    x = jnp.concatenate([x, jnp.full(lead + (pad,), NEG_INF, x.dtype)], axis=-1)
  blocks = x.reshape(lead + ((n + pad) // block, block))
  _, chosen = jax.lax.top_k(jnp.max(blocks, axis=-1), k)
  chosen = jnp.sort(chosen, axis=-1)  # ascending: ties keep the lowest index first
  cand = jnp.take_along_axis(blocks, chosen[..., None], axis=-2)
  values, pos = jax.lax.top_k(cand.reshape(lead + (k * block,)), k)
  index = jnp.take_along_axis(chosen, pos // block, axis=-1) * block + pos % block
  return values, index.astype(jnp.int32)


def expand_rows(tree: PyTree, n: int) -> PyTree:
  """Repeats every leaf's leading (batch) axis n times: [B, ...] -> [B*n, ...].

  Rows of one example stay adjacent (example-major), as the loops expect.
  """
  if n == 1:
    return tree
  return jax.tree_util.tree_map(
      lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, n, axis=0), tree)


def gather_rows(tree: PyTree, src: jax.Array, batch_size: int, k: int) -> PyTree:
  """Row (b, j) of every batch-leading leaf becomes row (b, src[b, j]).

  A leaf is reordered when its leading axis has batch_size * k rows; scalars and
  other leaves (e.g. a flax `cache_index`) are left alone.
  """
  rows = batch_size * k

  def one(x):
    if jnp.ndim(x) == 0 or x.shape[0] != rows:
      return x
    xb = x.reshape((batch_size, k) + x.shape[1:])
    xb = jax.vmap(lambda a, i: a[i])(xb, src)
    return xb.reshape(x.shape)

  return jax.tree_util.tree_map(one, tree)


def banned_ngram_mask(seqs: jax.Array, t: jax.Array, n: int,
                      vocab_size: int) -> jax.Array:
  """bool [rows, V]: tokens that would repeat an n-gram of seqs[:, :t+1]."""
  rows, length = seqs.shape
  j = jnp.arange(length)
  match = (j + n - 1 <= t) & (t - n + 2 >= 0)
  match = jnp.broadcast_to(match[None, :], (rows, length))
  for k in range(n - 1):
    shifted = jnp.take(seqs, jnp.clip(j + k, 0, length - 1), axis=1)
    last = jnp.take(seqs, jnp.clip(t - n + 2 + k, 0, length - 1), axis=1)
    match = match & (shifted == last[:, None])
  nxt = jnp.take(seqs, jnp.clip(j + n - 1, 0, length - 1), axis=1)
  banned = jnp.zeros((rows, vocab_size), jnp.int32)
  banned = banned.at[jnp.arange(rows)[:, None], nxt].max(
      match.astype(jnp.int32), mode="drop")
  return banned > 0


def step_log_probs(logits: jax.Array, state: DecodingState, *, rules: DecodingRules,
                   cstates: tuple, free_step: jax.Array, forced_token: jax.Array,
                   max_len: int, temperature: float = 1.0) -> jax.Array:
  """Log-probs [rows, V] of the next token under all the rules.

  `free_step` < 0 marks rows still in their prompt: they get log-prob 0 on
  `forced_token` and -inf elsewhere. Rows where nothing is allowed get all -inf.
  """
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = logits / temperature
  if rules.logits_processor is not None:
    logits = rules.logits_processor(logits, state, free_step)
  rows, vocab = logits.shape
  allowed = dc.allowed_mask(rules.constraints, cstates, free_step, vocab)
  if allowed is not None:
    logits = jnp.where(allowed, logits, NEG_INF)
  any_ok = jnp.any(logits > NEG_INF, axis=-1, keepdims=True)
  lp = jnp.where(any_ok, jax.nn.log_softmax(logits, axis=-1), NEG_INF)
  ids = jnp.arange(vocab)[None, :]
  eos_lp = lp[:, rules.eos_id]
  lp = jnp.where(ids == rules.pad_id, NEG_INF, lp)
  if rules.min_len > 0:
    lp = jnp.where((ids == rules.eos_id) & (free_step < rules.min_len)[:, None],
                   NEG_INF, lp)
  if rules.no_repeat_ngram_size > 0:
    banned = banned_ngram_mask(state.sequences, state.cur_index,
                               rules.no_repeat_ngram_size, vocab)
    lp = jnp.where(banned, NEG_INF, lp)
  # The last position admits only </s> (with its own log-prob, min_len aside).
  last = (state.cur_index >= max_len - 1)
  if rules.max_free_len is not None:
    last = last | (free_step >= rules.max_free_len - 1)
  last = jnp.broadcast_to(last, free_step.shape)[:, None]
  lp = jnp.where(last, jnp.where(ids == rules.eos_id, eos_lp[:, None], NEG_INF),
                 lp)
  forced = jnp.where(ids == forced_token[:, None], 0.0, NEG_INF)
  return jnp.where((free_step < 0)[:, None], forced, lp)


# ---------------------------------------------------------------------------
# Beam search.
# ---------------------------------------------------------------------------
@flax.struct.dataclass
class _BeamCarry:
  t: jax.Array  # int32 []
  alive_seqs: jax.Array  # int32 [B, K, L+1]  <s> + tokens
  alive_scores: jax.Array  # f32 [B, K] summed log-probs (-inf = dead beam)
  fin_seqs: jax.Array  # int32 [B, K, L+1]
  fin_scores: jax.Array  # f32 [B, K] normalized
  num_fin: jax.Array  # int32 [B]
  cache: PyTree
  cstates: tuple


def beam_search(tokens_to_logits: TokensToLogits, init_cache: PyTree, *,
                batch_size: int, max_decode_len: int, beam_size: int,
                length_penalty: float = 1.0,
                forced_tokens: Optional[jax.Array] = None,
                forced_lengths: Optional[jax.Array] = None,
                rules: DecodingRules = DecodingRules()
                ) -> tuple[jax.Array, jax.Array]:
  """Beam search with fairseq's finalisation and stopping.

  At each step the 2K best candidates are taken; those among the first K that end
  in `</s>` are finalised (normalised score) until K hypotheses are finished,
  which ends the example; the first K others stay alive. An example also ends
  when all its beams are dead (-inf, e.g. a closed set smaller than K). Finished
  slots that never filled come back with score -inf and only `<pad>` tokens.

  Args:
    tokens_to_logits: the step callback (cached or uncached).
    init_cache: cache for batch_size * beam_size rows (see `expand_rows`).
    batch_size, max_decode_len, beam_size: static sizes (L = max_decode_len).
    length_penalty: fairseq's lenpen (0 = unnormalised).
    forced_tokens: int32 [B, L] (only positions < forced_lengths are read).
    forced_lengths: int32 [B] prompt length per example (default 0).
    rules: the shared decoding rules.

  Returns:
    tokens int32 [B, K, L] best first, and scores float32 [B, K].
  """
  b, k, length = batch_size, beam_size, max_decode_len
  if k < 1 or length < 1:
    raise ValueError(f"beam_search: beam_size={k} and max_decode_len={length} "
                     "must be >= 1")
  f_tok, f_len = prompts.prompt_rows(forced_tokens, forced_lengths, b, length, k)
  seqs0 = jnp.full((b, k, length + 1), rules.pad_id, jnp.int32)
  seqs0 = seqs0.at[:, :, 0].set(rules.bos_id)
  scores0 = jnp.full((b, k), NEG_INF, jnp.float32).at[:, 0].set(0.0)
  carry0 = _BeamCarry(
      t=jnp.array(0, jnp.int32), alive_seqs=seqs0, alive_scores=scores0,
      fin_seqs=jnp.full((b, k, length + 1), rules.pad_id, jnp.int32),
      fin_scores=jnp.full((b, k), NEG_INF, jnp.float32),
      num_fin=jnp.zeros((b,), jnp.int32), cache=init_cache,
      cstates=dc.init_states(rules.constraints, b * k))

  def example_done(c: _BeamCarry) -> jax.Array:
    return (c.num_fin >= k) | jnp.all(c.alive_scores == NEG_INF, axis=1)

  def cond(c: _BeamCarry) -> jax.Array:
    return (c.t < length) & ~jnp.all(example_done(c))

  def body(c: _BeamCarry) -> _BeamCarry:
    t = c.t
    flat = c.alive_seqs.reshape(b * k, length + 1)[:, :length]
    state = DecodingState(cur_index=t, sequences=flat,
                          cur_token=jnp.take(flat, t, axis=1), cache=c.cache)
    logits, new_cache = tokens_to_logits(state)
    free_step = t - f_len  # [B*K]
    lp = step_log_probs(logits, state, rules=rules, cstates=c.cstates,
                        free_step=free_step, forced_token=jnp.take(f_tok, t, axis=1),
                        max_len=length)
    vocab = lp.shape[-1]
    cand = c.alive_scores[:, :, None] + lp.reshape(b, k, vocab)
    cand = cand.reshape(b, k * vocab)
    top_scores, top_idx = top_k(cand, 2 * k)
    src_beam, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    ex_free = free_step.reshape(b, k)[:, 0]  # same for every beam of an example
    cand_seqs = jax.vmap(lambda s, i: s[i])(c.alive_seqs, src_beam)
    cand_seqs = cand_seqs.at[:, :, t + 1].set(tok)
    is_eos = (tok == rules.eos_id) & (ex_free >= 0)[:, None]

    # Finalise the </s> candidates among the first K, in order, into free slots.
    free_len = jnp.maximum(ex_free + 1, 1).astype(jnp.float32)
    norm = top_scores[:, :k] / (free_len[:, None] ** length_penalty)
    ok = is_eos[:, :k] & (top_scores[:, :k] > NEG_INF)
    slot = c.num_fin[:, None] + jnp.cumsum(ok, axis=1) - 1
    put = ok & (slot < k)
    onehot = put[:, :, None] & (slot[:, :, None] == jnp.arange(k)[None, None, :])
    filled = jnp.any(onehot, axis=1)  # [B, slots]
    from_cand = jnp.argmax(onehot, axis=1)  # [B, slots]
    fin_seqs = jnp.where(filled[:, :, None],
                         jax.vmap(lambda s, i: s[i])(cand_seqs[:, :k], from_cand),
                         c.fin_seqs)
    fin_scores = jnp.where(filled, jnp.take_along_axis(norm, from_cand, axis=1),
                           c.fin_scores)
    num_fin = jnp.minimum(c.num_fin + jnp.sum(ok, axis=1), k)

    # The first K non-</s> candidates stay alive (padding with dead ones).
    prio = jnp.where(is_eos, 0, 2 * k - jnp.arange(2 * k)[None, :])
    _, keep = jax.lax.top_k(prio, k)
    keep_eos = jnp.take_along_axis(is_eos, keep, axis=1)
    alive_scores = jnp.where(keep_eos, NEG_INF,
                             jnp.take_along_axis(top_scores, keep, axis=1))
    alive_seqs = jax.vmap(lambda s, i: s[i])(cand_seqs, keep)
    src = jnp.take_along_axis(src_beam, keep, axis=1)
    new_tok = jnp.take_along_axis(tok, keep, axis=1).reshape(b * k)
    cstates = gather_rows(c.cstates, src, b, k)
    cstates = dc.update_states(rules.constraints, cstates, new_tok, free_step)
    return _BeamCarry(t=t + 1, alive_seqs=alive_seqs, alive_scores=alive_scores,
                      fin_seqs=fin_seqs, fin_scores=fin_scores, num_fin=num_fin,
                      cache=gather_rows(new_cache, src, b, k), cstates=cstates)

  c = jax.lax.while_loop(cond, body, carry0)
  # An example with nothing finished (its prompt filled L) returns its alive beams.
  none = (c.num_fin == 0)[:, None]
  seqs = jnp.where(none[:, :, None], c.alive_seqs, c.fin_seqs)
  scores = jnp.where(none, c.alive_scores, c.fin_scores)
  order = jnp.argsort(-scores, axis=1, stable=True)
  scores = jnp.take_along_axis(scores, order, axis=1)
  seqs = jax.vmap(lambda s, i: s[i])(seqs, order)[:, :, 1:]
  seqs = jnp.where((scores == NEG_INF)[:, :, None], rules.pad_id, seqs)
  return seqs, scores
