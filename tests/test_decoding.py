"""Beam search against fairseq's rules (NumPy reference), cached vs uncached, rules.

The toy models and the reference are in tests/decoding_toys.py; constraints and
sampling are tested in test_decoding_constraints.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import decoding
from ofa_jax import features as F
from ofa_jax.decoding import prompts
from ofa_jax.decoding import sampling as decoding_sampling
from tests.decoding_toys import (BOS, EOS, PAD, free_tokens, make_tokens_to_logits,
                                 prefix_model, ref_beam_search, ref_log_probs, run_beam,
                                 tiny_lm)


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
  full = jax.jit(model.apply)({"params": params}, seqs)
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
      assert len(free_tokens(seq)) >= min_len
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
      seq = [BOS] + free_tokens(toks[0, j])
      grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
      assert len(grams) == len(set(grams)), (n, seq)
  toks, _ = run_beam(fn, b=1, length=length, k=1)
  assert free_tokens(toks[0, 0])[:4] == [4, 5, 4, 5]  # the check can fail


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
    assert len(free_tokens(toks[0, j])) >= 3 + 1
  assert decoding.answer_tokens(toks[:, 0], plen) == [
      free_tokens(toks[0, 0, 3:]), free_tokens(toks[1, 0, 1:])]
  assert len(decoding.answer_tokens(toks, plen)[1]) == k
  pt, pl = prompts.batch_prompt(
      {F.DECODER_TARGET_TOKENS: jnp.array([[6, 7, 4, 2, 1]]),
       F.DECODER_LOSS_WEIGHTS: jnp.array([[0., 0., 1., 1., 0.]])})
  assert int(pl[0]) == 2 and pt.shape == (1, 5)


@pytest.mark.parametrize("shape,k", [((3, 5 * 5097), 10), ((2, 297285), 10),
                                     ((4, 9000), 1), ((2, 3000), 10)])
def test_blocked_top_k_equals_lax_top_k(shape, k):
  """The blocked top-k used inside the decoding loops (XLA:CPU sorts a plain
  `lax.top_k` there) returns lax.top_k's values and indices."""
  x = jax.random.normal(jax.random.key(shape[1]), shape)
  # Banned ids (-inf) everywhere but a few survivors in one row.
  x = x.at[0].set(jnp.where(jnp.arange(shape[1]) % 997 == 5, x[0], -jnp.inf))
  want_v, want_i = jax.lax.top_k(x, k)
  got_v, got_i = jax.jit(lambda a: decoding.top_k(a, k))(x)
  np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
  finite = np.isfinite(np.asarray(want_v))
  np.testing.assert_array_equal(np.asarray(got_i)[finite], np.asarray(want_i)[finite])
  # Every returned index points at its value (also for -inf ties).
  np.testing.assert_array_equal(
      np.take_along_axis(np.asarray(x), np.asarray(got_i), axis=1), np.asarray(got_v))
