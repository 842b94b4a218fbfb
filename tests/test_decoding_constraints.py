"""Decoding constraints (id ranges, closed-set tries), sampling, and argument errors.

The toy models are in tests/decoding_toys.py.
"""

from __future__ import annotations

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import decoding
from ofa_jax.decoding import constraints as dc
from ofa_jax.decoding import sampling as decoding_sampling
from tests.decoding_toys import (BOS, EOS, PAD, free_tokens, make_tokens_to_logits,
                                 prefix_model, ref_log_probs, run_beam)


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


def test_box_run_constraint_keeps_bins_in_runs_of_four():
  emb, pos = prefix_model(LAYOUT_VOCAB, 14, seed=5, eos_bias=-2.0)
  fn = make_tokens_to_logits(emb, pos)
  rules = decoding.DecodingRules(constraints=(dc.BoxRunConstraint(LAYOUT),))
  toks, _ = jax.jit(lambda r: decoding_sampling.temperature_sample(
      fn, (), r, batch_size=4, max_decode_len=14, num_samples=8,
      temperature=3.0, rules=rules))(jax.random.PRNGKey(3))
  lo, hi = LAYOUT.bin_range
  seen_box = False
  for seq in np.asarray(toks).reshape(-1, 14):
    run = 0
    for t in seq[:-1]:  # the last position is a forced </s> at the length limit
      if lo <= t < hi:
        run += 1
        continue
      assert run % 4 == 0, seq  # text, </s> or pad only between whole boxes
      seen_box |= run > 0
      run = 0
      assert t < LAYOUT.code_offset, seq  # never a code
  assert seen_box  # the sampler did emit boxes (the check above could fail)
  state = dc.BoxRunConstraint(LAYOUT).init_state(2)
  for token in (lo, lo, 4, lo):  # a text token resets a run
    state = dc.BoxRunConstraint(LAYOUT).update(state, jnp.full((2,), token), 0)
  np.testing.assert_array_equal(state, [1, 1])


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
      assert tuple(free_tokens(seq)) + (EOS,) in answer_set, seq
    else:
      assert (seq == PAD).all()
  assert valid == 2 * min(k, len(answer_set))
  for seq, score in zip(np.asarray(stoks).reshape(-1, length),
                        np.asarray(sscores).ravel()):
    assert np.isfinite(score)
    assert tuple(free_tokens(seq)) + (EOS,) in answer_set, seq


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
  got = [free_tokens(s) + [EOS] for s in np.asarray(toks[0])]
  assert got == [a for _, a in want]
  np.testing.assert_allclose(np.asarray(scores[0]), [s for s, _ in want], rtol=1e-5)


def test_trie_from_host_trie_starts_after_bos():
  from ofa_jax import trie as trie_lib  # pylint: disable=g-import-not-at-top

  answers = [[4, 5, EOS], [4, 6, 7, EOS], [8, EOS]]
  host = trie_lib.Trie.from_sequences([[BOS] + a for a in answers])
  dense = dc.DenseTrie.from_trie(host)
  emb, pos = prefix_model(12, 6, seed=8)
  toks, scores = run_beam(make_tokens_to_logits(emb, pos), b=1, length=6, k=3,
                          rules=decoding.DecodingRules(
                              constraints=(dc.TrieConstraint(dense),)))
  got = sorted(free_tokens(s) + [EOS] for s in np.asarray(toks[0]))
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
