"""Toy models for the decoding tests, and fairseq's beam search restated in NumPy.

The toy "prefix model" gives logits that depend on the whole prefix
(sum_j P[t, j] * E[token_j]), so beam reordering bugs change the result; a NumPy
re-statement of fairseq's beam search checks the compiled one. A tiny flax
attention LM with a real KV cache checks cached against uncached decoding.
Shared by test_decoding.py and test_decoding_constraints.py.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import decoding
from ofa_jax import features

EOS, PAD, BOS = features.EOS_ID, features.PAD_ID, features.BOS_ID
NEG = -np.inf


def prefix_model(vocab: int, length: int, seed: int, eos_bias: float = 0.0):
  rs = np.random.RandomState(seed)
  emb = rs.normal(size=(vocab, vocab)).astype(np.float32) * 2.0
  pos = rs.uniform(0.2, 1.0, size=(length, length)).astype(np.float32)
  emb[:, EOS] += eos_bias
  return emb, pos


def prefix_logits_np(emb, pos, seq_in, t):
  return sum(pos[t, j] * emb[seq_in[j]] for j in range(t + 1))


def make_tokens_to_logits(emb, pos):
  emb, pos = jnp.asarray(emb), jnp.asarray(pos)

  def fn(state: decoding.DecodingState):
    length = state.sequences.shape[1]
    w = jnp.where(jnp.arange(length) <= state.cur_index, pos[state.cur_index], 0.0)
    logits = jnp.einsum("l,rlv->rv", w, emb[state.sequences])
    return logits, state.cache

  return fn


def ref_log_probs(emb, pos, seq_in, t, *, free_step, forced_tok, length, min_len,
                  ngram, allowed=None):
  """fairseq's per-step rules, restated in NumPy for one row."""
  if free_step < 0:
    lp = np.full(emb.shape[0], NEG)
    lp[forced_tok] = 0.0
    return lp
  logits = prefix_logits_np(emb, pos, seq_in, t).astype(np.float64)
  if allowed is not None:
    logits = np.where(allowed, logits, NEG)
  m = logits.max()
  lp = logits - m - np.log(np.sum(np.exp(logits - m)))
  eos_lp = lp[EOS]
  lp[PAD] = NEG
  if free_step < min_len:
    lp[EOS] = NEG
  if ngram > 0 and t + 1 >= ngram - 1:
    tail = tuple(seq_in[t - ngram + 2:t + 1])
    for j in range(0, t - ngram + 2):
      if tuple(seq_in[j:j + ngram - 1]) == tail:
        lp[seq_in[j + ngram - 1]] = NEG
  if t >= length - 1:
    lp[:] = NEG
    lp[EOS] = eos_lp
  return lp


def ref_beam_search(emb, pos, *, length, k, lenpen, min_len=0, ngram=0,
                    prompt=()):
  """fairseq's SequenceGenerator semantics for one example, in plain Python."""
  alive = [([BOS], 0.0)]
  finished = []
  for t in range(length):
    free_step = t - len(prompt)
    forced = prompt[t] if free_step < 0 else -1
    cands = []
    for bi, (seq, score) in enumerate(alive):
      lp = ref_log_probs(emb, pos, seq, t, free_step=free_step, forced_tok=forced,
                         length=length, min_len=min_len, ngram=ngram)
      for tok in range(len(lp)):
        if lp[tok] > NEG:
          cands.append((score + lp[tok], bi * len(lp) + tok, seq + [tok]))
    cands.sort(key=lambda c: (-c[0], c[1]))
    cands = cands[:2 * k]
    for score, _, seq in cands[:k]:
      if seq[-1] == EOS and free_step >= 0 and len(finished) < k:
        finished.append((seq, score / float(free_step + 1) ** lenpen))
    alive = [(seq, s) for s, _, seq in cands
             if not (seq[-1] == EOS and free_step >= 0)][:k]
    if len(finished) >= k or not alive:
      break
  finished.sort(key=lambda f: -f[1])
  return [(f[0][1:] + [PAD] * (length + 1 - len(f[0])), f[1]) for f in finished]


class TinyLM(nn.Module):
  """One causal attention layer with a KV cache (t5x-style `decode=True`)."""

  vocab: int
  max_len: int
  dim: int = 16

  @nn.compact
  def __call__(self, tokens, decode: bool = False):
    emb = nn.Embed(self.vocab, self.dim)
    pos = self.param("pos", nn.initializers.normal(1.0), (self.max_len, self.dim))
    x = emb(tokens)
    rows, steps = tokens.shape
    if decode:
      initialized = self.has_variable("cache", "cached_key")
      shape = (rows, self.max_len, self.dim)
      ck = self.variable("cache", "cached_key", jnp.zeros, shape)
      cv = self.variable("cache", "cached_value", jnp.zeros, shape)
      ci = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
      idx = ci.value
      x = x + jax.lax.dynamic_slice_in_dim(pos, idx, 1)[None]
      k, v = nn.Dense(self.dim, name="k")(x), nn.Dense(self.dim, name="v")(x)
      if initialized:  # the init call only creates the (empty) cache
        ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, idx, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, idx, 0))
        ci.value = idx + 1
      keys, vals = ck.value, cv.value
      mask = (jnp.arange(self.max_len) <= idx)[None, None, :]
    else:
      x = x + pos[:steps][None]
      keys, vals = nn.Dense(self.dim, name="k")(x), nn.Dense(self.dim, name="v")(x)
      mask = jnp.tril(jnp.ones((steps, steps), bool))[None]
    q = nn.Dense(self.dim, name="q")(x)
    att = jnp.einsum("bqd,bkd->bqk", q, keys) / np.sqrt(self.dim)
    att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
    h = x + jnp.einsum("bqk,bkd->bqd", att, vals)
    return nn.Dense(self.vocab, name="out")(jnp.tanh(h)) * 3.0


@functools.lru_cache(maxsize=None)
def tiny_lm(vocab=12, length=6):
  """The model, its parameters and its step functions (built once per shape).

  Initialised under `jax.jit`: an eager flax init compiles every op on its own,
  which costs more than the tests that use it.
  """
  model = TinyLM(vocab=vocab, max_len=length)
  params = jax.jit(model.init)(jax.random.PRNGKey(0),
                               jnp.zeros((1, length), jnp.int32))["params"]

  def cached(state):
    logits, mut = model.apply({"params": params, "cache": state.cache},
                              state.cur_token[:, None], decode=True, mutable=["cache"])
    return logits[:, 0], mut["cache"]

  def uncached(state):
    logits = model.apply({"params": params}, state.sequences)
    return jnp.take(logits, state.cur_index, axis=1), state.cache

  def init_cache(n_rows):
    # The cache starts as zeros (index 0): only its shapes need the model.
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((n_rows, 1), jnp.int32), decode=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

  return model, params, cached, uncached, init_cache


def run_beam(fn, *, b, length, k, cache=(), **kw):
  rules = kw.pop("rules", decoding.DecodingRules())
  return jax.jit(lambda c: decoding.beam_search(
      fn, c, batch_size=b, max_decode_len=length, beam_size=k, rules=rules,
      **kw))(cache)



def free_tokens(seq) -> list[int]:
  """The tokens of a decoded row before its first </s>."""
  seq = [int(x) for x in seq]
  return seq[:seq.index(EOS)] if EOS in seq else seq
