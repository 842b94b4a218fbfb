"""Prefix trie: OFA semantics on the host, and the same answers from its device form."""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import trie as trie_lib
from ofa_jax.decoding import constraints as dc
from ofa_jax import vocab as vocab_lib

BOS, EOS, V = 0, 2, 40

_seqs = st.lists(st.lists(st.integers(4, V - 1), min_size=1, max_size=5),
                 min_size=1, max_size=8)


def _with_specials(seqs):
  return [[BOS] + s + [EOS] for s in seqs]


def test_ofa_semantics():
  t = trie_lib.Trie.from_sequences([[0, 5, 6, 2], [0, 5, 7, 2], [0, 9, 2]])
  assert t.next_allowed([]) == [0]
  assert t.next_allowed([0]) == [5, 9]
  assert t.next_allowed([0, 5]) == [6, 7]
  assert t.next_allowed([0, 5, 6]) == [2]
  assert t.next_allowed([0, 8]) == [2]  # fell off: eos only
  assert t.next_allowed([0, 9, 2]) == [2]  # complete answer: eos (OFA: nothing)
  assert [0, 9, 2] in t and [0, 9] not in t
  with pytest.raises(ValueError, match="empty"):
    t.insert([])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(seqs=_seqs, choices=st.lists(st.integers(0, 1000), min_size=8, max_size=8))
def test_walking_the_trie_only_yields_inserted_answers(seqs, choices):
  full = _with_specials(seqs)
  t = trie_lib.Trie.from_sequences(full)
  prefix = [BOS]
  for c in choices * 2:
    allowed = t.next_allowed(prefix)
    prefix.append(allowed[c % len(allowed)])
    assert any(s[:len(prefix)] == prefix for s in full), prefix
    if prefix[-1] == EOS:
      break
  assert prefix in full


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(seqs=_seqs, junk=st.lists(st.integers(3, V - 1), min_size=1, max_size=4))
def test_off_trie_prefixes_allow_only_eos(seqs, junk):
  full = _with_specials(seqs)
  t = trie_lib.Trie.from_sequences(full)
  prefix = [BOS] + junk
  hypothesis.assume(not any(s[:len(prefix)] == prefix for s in full))
  assert t.next_allowed(prefix) == [EOS]


@pytest.mark.slow
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(seqs=_seqs, junk=st.lists(st.integers(3, V - 1), min_size=1, max_size=3))
def test_device_trie_agrees_with_host_trie(seqs, junk):
  full = _with_specials(seqs)
  t = trie_lib.Trie.from_sequences(full)
  assert t.start == t.walk([BOS])
  constraint = dc.TrieConstraint(dc.DenseTrie.from_trie(t), eos_id=EOS)
  step = jax.jit(lambda s, tok: constraint.update(s, tok, jnp.zeros_like(s)))
  mask = jax.jit(lambda s: constraint.allowed(s, jnp.zeros_like(s), V))
  for path in full + [[BOS] + junk + [EOS]]:
    state = constraint.init_state(1)
    for k in range(1, len(path)):
      want = np.zeros(V, bool)
      want[t.next_allowed(path[:k])] = True
      np.testing.assert_array_equal(np.asarray(mask(state))[0], want,
                                    err_msg=str(path[:k]))
      state = step(state, jnp.array([path[k]], jnp.int32))


def test_from_answers_with_vocabulary():
  v = vocab_lib.default_vocabulary()
  answers = ["yes", "no", "maybe", "red circle", "red square"]
  t = trie_lib.Trie.from_answers(v, answers)
  for a in answers:
    assert [v.bos_id] + v.encode(a) + [v.eos_id] in t
  first = t.next_allowed([v.bos_id])
  assert sorted({v.encode(a)[0] for a in answers}) == first
  with pytest.raises(ValueError, match="non-empty"):
    trie_lib.Trie.from_answers(v, ["ok", ""])
