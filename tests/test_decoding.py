"""Tests of ofa_jax.decoding, decoding_sampling and decoding_constraints (toy LMs).

The toy "prefix model" gives logits that depend on the whole prefix
(sum_j P[t, j] * E[token_j]), so beam reordering bugs change the result; a NumPy
re-statement of fairseq's beam search checks the compiled one. A tiny flax
attention LM with a real KV cache checks cached against uncached decoding.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import decoding
from ofa_jax import decoding_constraints as dc
from ofa_jax import decoding_sampling
from ofa_jax import features

EOS, PAD, BOS = features.EOS_ID, features.PAD_ID, features.BOS_ID
NEG = -np.inf


# ---------------------------------------------------------------------------
# Toy models.
# ---------------------------------------------------------------------------
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


def tiny_lm(vocab=12, length=6, rows=2):
  model = TinyLM(vocab=vocab, max_len=length)
  params = model.init(jax.random.PRNGKey(0),
                      jnp.zeros((1, length), jnp.int32))["params"]

  def cached(state):
    logits, mut = model.apply({"params": params, "cache": state.cache},
                              state.cur_token[:, None], decode=True, mutable=["cache"])
    return logits[:, 0], mut["cache"]

  def uncached(state):
    logits = model.apply({"params": params}, state.sequences)
    return jnp.take(logits, state.cur_index, axis=1), state.cache

  def init_cache(n_rows):
    return model.init(jax.random.PRNGKey(0), jnp.zeros((n_rows, 1), jnp.int32),
                      decode=True)["cache"]

  return model, params, cached, uncached, init_cache


def run_beam(fn, *, b, length, k, cache=(), **kw):
  rules = kw.pop("rules", decoding.DecodingRules())
  return jax.jit(lambda c: decoding.beam_search(
      fn, c, batch_size=b, max_decode_len=length, beam_size=k, rules=rules,
      **kw))(cache)


# ---------------------------------------------------------------------------
# Beam search against the reference.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("k,lenpen,min_len,ngram,eos_bias", [
    (1, 1.0, 0, 0, 0.0), (3, 1.0, 0, 0, 1.0), (4, 0.0, 2, 0, 2.0),
    (3, 0.7, 1, 2, 1.5), (2, 1.0, 0, 3, -1.0)])
def test_beam_search_matches_fairseq_reference(k, lenpen, min_len, ngram, eos_bias):
  vocab, length = 7, 6
  emb, pos = prefix_model(vocab, length, seed=k * 10 + ngram, eos_bias=eos_bias)
  rules = decoding.DecodingRules(min_len=min_len, no_repeat_ngram_size=ngram)
  toks, scores = run_beam(make_tokens_to_logits(emb, pos), b=1, length=length,
                          k=k, length_penalty=lenpen, rules=rules)
  ref = ref_beam_search(emb, pos, length=length, k=k, lenpen=lenpen,
                        min_len=min_len, ngram=ngram)
  assert ref, "the reference found no hypothesis"
  got_valid = int(np.sum(np.isfinite(np.asarray(scores[0]))))
  assert got_valid == len(ref)
  for j, (seq, score) in enumerate(ref):
    np.testing.assert_array_equal(np.asarray(toks[0, j]), seq[:length])
    np.testing.assert_allclose(float(scores[0, j]), score, rtol=1e-4, atol=1e-4)


def test_beam_scores_are_normalized_log_probs_of_their_tokens():
  vocab, length, k = 8, 7, 3
  emb, pos = prefix_model(vocab, length, seed=3, eos_bias=1.0)
  toks, scores = run_beam(make_tokens_to_logits(emb, pos), b=1, length=length, k=k,
                          length_penalty=0.5)
  for j in range(k):
    seq = [int(x) for x in toks[0, j]]
    n = seq.index(EOS) + 1
    total, inp = 0.0, [BOS]
    for t in range(n):
      lp = ref_log_probs(emb, pos, inp, t, free_step=t, forced_tok=-1,
                         length=length, min_len=0, ngram=0)
      total += lp[seq[t]]
      inp.append(seq[t])
    np.testing.assert_allclose(float(scores[0, j]), total / n ** 0.5, rtol=1e-5)
  assert np.all(np.diff(np.asarray(scores[0])) <= 0)


def test_beam_one_equals_greedy_and_top_k_one_sampling():
  vocab, length, b = 9, 8, 3
  emb, pos = prefix_model(vocab, length, seed=5, eos_bias=0.5)
  fn = make_tokens_to_logits(emb, pos)
  rules = decoding.DecodingRules(min_len=2, no_repeat_ngram_size=2)
  beam_toks, beam_scores = run_beam(fn, b=b, length=length, k=1,
                                    length_penalty=0.0, rules=rules)
  g_toks, g_scores = jax.jit(lambda: decoding_sampling.greedy_search(
      fn, (), batch_size=b, max_decode_len=length, rules=rules))()
  s_toks, _ = jax.jit(lambda r: decoding_sampling.temperature_sample(
      fn, (), r, batch_size=b, max_decode_len=length, top_k=1, temperature=0.7,
      rules=rules))(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(beam_toks[:, 0]), np.asarray(g_toks))
  np.testing.assert_allclose(np.asarray(beam_scores[:, 0]), np.asarray(g_scores),
                             rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(s_toks[:, 0]), np.asarray(g_toks))


# ---------------------------------------------------------------------------
# Cached vs uncached.
# ---------------------------------------------------------------------------
def test_cached_and_uncached_steps_give_the_same_logits():
  vocab, length, rows = 12, 6, 2
  model, params, cached, uncached, init_cache = tiny_lm(vocab, length)
  cached, uncached = jax.jit(cached), jax.jit(uncached)
  seqs = jnp.asarray(np.random.RandomState(0).randint(4, vocab, (rows, length)))
  full = model.apply({"params": params}, seqs)
  cache = init_cache(rows)
  for t in range(length):
    state = decoding.DecodingState(cur_index=jnp.array(t), sequences=seqs,
                                   cur_token=seqs[:, t], cache=cache)
    got, cache = cached(state)
    want, _ = uncached(state)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full[:, t]), atol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_cached_beam_search_equals_uncached(k):
  vocab, length, b = 12, 6, 2
  _, _, cached, uncached, init_cache = tiny_lm(vocab, length)
  prompt = jnp.array([[7, 8, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0]], jnp.int32)
  plen = jnp.array([2, 1], jnp.int32)
  out = []
  for fn, cache in ((cached, init_cache(b * k)), (uncached, ())):
    out.append(jax.jit(lambda c, fn=fn: decoding.beam_search(
        fn, c, batch_size=b, max_decode_len=length, beam_size=k,
        forced_tokens=prompt, forced_lengths=plen,
        rules=decoding.DecodingRules(no_repeat_ngram_size=2)))(cache))
  np.testing.assert_array_equal(np.asarray(out[0][0]), np.asarray(out[1][0]))
  np.testing.assert_allclose(np.asarray(out[0][1]), np.asarray(out[1][1]), atol=1e-5)


# ---------------------------------------------------------------------------
# Rules.
# ---------------------------------------------------------------------------
def _free_tokens(seq):
  seq = [int(x) for x in seq]
  return seq[:seq.index(EOS)] if EOS in seq else seq


def test_min_len_forbids_early_eos_and_pad_is_never_emitted():
  vocab, length = 8, 8
  emb, pos = prefix_model(vocab, length, seed=2, eos_bias=8.0)
  emb[:, PAD] += 20.0  # the model loves <pad>; it must never come out
  fn = make_tokens_to_logits(emb, pos)
  for min_len in (0, 3, 5):
    rules = decoding.DecodingRules(min_len=min_len)
    toks, scores = run_beam(fn, b=1, length=length, k=2, rules=rules)
    for j in range(2):
      seq = [int(x) for x in toks[0, j]]
      assert np.isfinite(float(scores[0, j]))
      assert len(_free_tokens(seq)) >= min_len
      assert PAD not in seq[:seq.index(EOS)]
    if min_len == 0:  # the eos bias makes the empty answer the best
      assert int(toks[0, 0, 0]) == EOS


def test_no_repeat_ngram_blocks_repeats():
  vocab, length = 6, 10
  emb = np.full((vocab, vocab), -5.0, np.float32)
  emb[BOS, 4] = emb[4, 5] = emb[5, 4] = 5.0  # the model wants 4 5 4 5 4 ...
  pos = np.ones((length, length), np.float32) * 0.0
  pos[np.arange(length), np.arange(length)] = 1.0  # bigram model
  fn = make_tokens_to_logits(emb, pos)
  for n in (2, 3):
    toks, _ = run_beam(fn, b=1, length=length, k=2,
                       rules=decoding.DecodingRules(no_repeat_ngram_size=n))
    for j in range(2):
      seq = [BOS] + _free_tokens(toks[0, j])
      grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
      assert len(grams) == len(set(grams)), (n, seq)
  toks, _ = run_beam(fn, b=1, length=length, k=1)
  assert _free_tokens(toks[0, 0])[:4] == [4, 5, 4, 5]  # the check can fail


def test_forced_prompt_is_emitted_then_free_decoding():
  vocab, length, b, k = 9, 8, 2, 2
  emb, pos = prefix_model(vocab, length, seed=7)
  fn = make_tokens_to_logits(emb, pos)
  prompt = np.full((b, length), PAD, np.int32)
  prompt[0, :3] = [6, 7, 8]
  prompt[1, :1] = [5]
  plen = np.array([3, 1], np.int32)
  emb[:, 6] -= 30.0  # the model hates token 6: it is forced anyway
  fn = make_tokens_to_logits(emb, pos)
  toks, scores = jax.jit(lambda: decoding.beam_search(
      fn, (), batch_size=b, max_decode_len=length, beam_size=k,
      forced_tokens=jnp.asarray(prompt), forced_lengths=jnp.asarray(plen),
      length_penalty=0.0, rules=decoding.DecodingRules(min_len=1)))()
  toks = np.asarray(toks)
  assert (toks[0, :, :3] == [6, 7, 8]).all() and (toks[1, :, :1] == [5]).all()
  ref = ref_beam_search(emb, pos, length=length, k=k, lenpen=0.0, min_len=1,
                        prompt=list(prompt[0, :3]))
  np.testing.assert_array_equal(toks[0, 0], ref[0][0][:length])
  np.testing.assert_allclose(float(scores[0, 0]), ref[0][1], rtol=1e-5)
  for j in range(k):  # min_len counts free tokens only
    assert len(_free_tokens(toks[0, j])) >= 3 + 1
  assert decoding.answer_tokens(toks[:, 0], plen) == [
      _free_tokens(toks[0, 0, 3:]), _free_tokens(toks[1, 0, 1:])]
  assert len(decoding.answer_tokens(toks, plen)[1]) == k
  pt, pl = decoding.forced_prompt_from_targets(
      jnp.array([[6, 7, 4, 2, 1]]), jnp.array([[0., 0., 1., 1., 0.]]))
  assert int(pl[0]) == 2 and pt.shape == (1, 5)


# ---------------------------------------------------------------------------
# Constraints.
# ---------------------------------------------------------------------------
LAYOUT = dc.IdLayout(code_offset=10, num_codes=6, bin_offset=16, num_bins=8)
LAYOUT_VOCAB = 24


def test_box_constraint_gives_exactly_four_bins_then_eos():
  emb, pos = prefix_model(LAYOUT_VOCAB, 8, seed=11, eos_bias=3.0)
  fn = make_tokens_to_logits(emb, pos)
  rules = decoding.DecodingRules(constraints=(dc.box_constraint(LAYOUT),),
                                 no_repeat_ngram_size=3)
  toks, scores = run_beam(fn, b=2, length=8, k=3, rules=rules)
  lo, hi = LAYOUT.bin_range
  for seq in np.asarray(toks).reshape(-1, 8):
    assert ((seq[:4] >= lo) & (seq[:4] < hi)).all() and seq[4] == EOS, seq
    assert (seq[5:] == PAD).all()
  assert np.isfinite(np.asarray(scores)).all()


def test_image_and_text_constraints_sampling():
  emb, pos = prefix_model(LAYOUT_VOCAB, 8, seed=12)
  fn = make_tokens_to_logits(emb, pos)
  img = decoding.DecodingRules(constraints=(dc.image_constraint(LAYOUT, 5),))
  toks, _ = jax.jit(lambda r: decoding_sampling.temperature_sample(
      fn, (), r, batch_size=2, max_decode_len=8, num_samples=3, top_k=4,
      rules=img))(jax.random.PRNGKey(0))
  lo, hi = LAYOUT.code_range
  for seq in np.asarray(toks).reshape(-1, 8):
    assert ((seq[:5] >= lo) & (seq[:5] < hi)).all() and seq[5] == EOS, seq
  txt = decoding.DecodingRules(constraints=(dc.text_constraint(LAYOUT),))
  toks, _ = jax.jit(lambda r: decoding_sampling.temperature_sample(
      fn, (), r, batch_size=2, max_decode_len=8, num_samples=4, temperature=2.0,
      rules=txt))(jax.random.PRNGKey(1))
  assert (np.asarray(toks) < LAYOUT.code_offset).all()


def test_top_k_sampling_stays_in_the_top_k_and_varies():
  vocab = 16
  emb, pos = prefix_model(vocab, 2, seed=4, eos_bias=-50.0)
  fn = make_tokens_to_logits(emb, pos)
  toks, _ = jax.jit(lambda r: decoding_sampling.temperature_sample(
      fn, (), r, batch_size=1, max_decode_len=2, num_samples=64, top_k=3,
      temperature=5.0))(jax.random.PRNGKey(3))
  first = np.asarray(toks[0, :, 0])
  logits = emb[BOS] * pos[0, 0]
  logits[PAD] = -np.inf
  top3 = set(np.argsort(-logits)[:3].tolist())
  assert set(first.tolist()) <= top3
  assert len(set(first.tolist())) > 1
  toks_p, _ = jax.jit(lambda r: decoding_sampling.temperature_sample(
      fn, (), r, batch_size=1, max_decode_len=2, num_samples=16, top_p=1e-6))(
          jax.random.PRNGKey(3))
  assert set(np.asarray(toks_p[0, :, 0]).tolist()) == {int(np.argmax(logits))}


@functools.lru_cache(maxsize=None)
def _trie_decoder(vocab: int, length: int, k: int):
  """One compiled beam search + sampler for every trie padded to 64 edges."""

  def go(trie, emb, pos, rng):
    fn = make_tokens_to_logits(emb, pos)
    rules = decoding.DecodingRules(constraints=(dc.TrieConstraint(trie),))
    beam = decoding.beam_search(fn, (), batch_size=2, max_decode_len=length,
                                beam_size=k, rules=rules)
    samp = decoding_sampling.temperature_sample(
        fn, (), rng, batch_size=2, max_decode_len=length, num_samples=3,
        temperature=3.0, rules=rules)
    return beam, samp

  return jax.jit(go)


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    answers=st.lists(st.lists(st.integers(4, 11), min_size=1, max_size=4),
                     min_size=1, max_size=6),
    seed=st.integers(0, 1000))
def test_trie_constraint_never_leaves_the_closed_set(answers, seed):
  vocab, length, k = 12, 6, 4
  answer_set = {tuple(a) + (EOS,) for a in answers}
  trie = dc.DenseTrie.from_sequences(sorted(answer_set)).pad_to(64)
  emb, pos = prefix_model(vocab, length, seed=seed, eos_bias=2.0)
  (btoks, bscores), (stoks, sscores) = _trie_decoder(vocab, length, k)(
      trie, jnp.asarray(emb), jnp.asarray(pos), jax.random.PRNGKey(seed))
  valid = 0
  for seq, score in zip(np.asarray(btoks).reshape(-1, length),
                        np.asarray(bscores).ravel()):
    if np.isfinite(score):
      valid += 1
      assert tuple(_free_tokens(seq)) + (EOS,) in answer_set, seq
    else:
      assert (seq == PAD).all()
  assert valid == 2 * min(k, len(answer_set))
  for seq, score in zip(np.asarray(stoks).reshape(-1, length),
                        np.asarray(sscores).ravel()):
    assert np.isfinite(score)
    assert tuple(_free_tokens(seq)) + (EOS,) in answer_set, seq


def test_trie_beam_finds_the_best_answer_of_the_set():
  vocab, length = 12, 6
  emb, pos = prefix_model(vocab, length, seed=21)
  answers = [[4, 5, EOS], [4, 6, 7, EOS], [8, EOS], [9, 9, 9, EOS]]
  fn = make_tokens_to_logits(emb, pos)
  rules = decoding.DecodingRules(constraints=(
      dc.TrieConstraint(dc.DenseTrie.from_sequences(answers)),))
  toks, scores = run_beam(fn, b=1, length=length, k=4, length_penalty=0.0,
                          rules=rules)

  def score(ans):  # log-prob renormalised over the trie's children at each step
    total, inp, node = 0.0, [BOS], answers
    for t, tok in enumerate(ans):
      allowed = np.zeros(vocab, bool)
      allowed[[a[t] for a in node]] = True
      lp = ref_log_probs(emb, pos, inp, t, free_step=t, forced_tok=-1,
                         length=length, min_len=0, ngram=0, allowed=allowed)
      total += lp[tok]
      inp.append(tok)
      node = [a for a in node if a[t] == tok]
    return total

  want = sorted(((score(a), a) for a in answers), reverse=True)
  got = [_free_tokens(s) + [EOS] for s in np.asarray(toks[0])]
  assert got == [a for _, a in want]
  np.testing.assert_allclose(np.asarray(scores[0]), [s for s, _ in want], rtol=1e-5)


def test_trie_from_host_trie_tables_starts_after_bos():
  from ofa_jax import trie as trie_lib  # pylint: disable=g-import-not-at-top

  answers = [[4, 5, EOS], [4, 6, 7, EOS], [8, EOS]]
  host = trie_lib.Trie.from_sequences([[BOS] + a for a in answers])
  dense = dc.DenseTrie.from_tables(host)
  emb, pos = prefix_model(12, 6, seed=8)
  toks, scores = run_beam(make_tokens_to_logits(emb, pos), b=1, length=6, k=3,
                          rules=decoding.DecodingRules(
                              constraints=(dc.TrieConstraint(dense),)))
  got = sorted(_free_tokens(s) + [EOS] for s in np.asarray(toks[0]))
  assert got == sorted(answers) and np.isfinite(np.asarray(scores)).all()


def test_max_free_len_and_logits_processor():
  vocab, length = 9, 8
  emb, pos = prefix_model(vocab, length, seed=9, eos_bias=-20.0)  # never stops
  fn = make_tokens_to_logits(emb, pos)
  prompt = np.full((2, length), PAD, np.int32)
  prompt[1, :2] = [7, 8]

  def no_five(logits, state, free_step):
    del state, free_step
    return logits.at[:, 5].set(-jnp.inf)

  rules = decoding.DecodingRules(max_free_len=3, logits_processor=no_five)
  toks, _ = jax.jit(lambda: decoding.beam_search(
      fn, (), batch_size=2, max_decode_len=length, beam_size=2, rules=rules,
      forced_tokens=jnp.asarray(prompt),
      forced_lengths=jnp.array([0, 2], jnp.int32)))()
  toks = np.asarray(toks)
  for row, plen in zip(toks[:, 0], (0, 2)):
    assert row[plen + 2] == EOS and EOS not in row[plen:plen + 2], row
  free = [t for row, plen in zip(toks[:, 0], (0, 2)) for t in row[plen:plen + 2]]
  assert 5 not in free


def test_bad_arguments_raise_clear_errors():
  fn = make_tokens_to_logits(*prefix_model(6, 4, seed=0))
  with pytest.raises(ValueError, match="forced_tokens has shape"):
    decoding.beam_search(fn, (), batch_size=1, max_decode_len=4, beam_size=2,
                         forced_tokens=jnp.zeros((1, 3), jnp.int32),
                         forced_lengths=jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match="needs an rng"):
    decoding_sampling.temperature_sample(fn, (), None, batch_size=1,
                                         max_decode_len=4)
  with pytest.raises(ValueError, match="hi < lo"):
    dc.IdRangeConstraint(np.array([[[5, 3]]]))
  with pytest.raises(ValueError, match="empty"):
    dc.DenseTrie.from_sequences([])
