"""The static-shape interleaving of adapter slots with text tokens (layout.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import features
from ofa_jax.model import layout
from ofa_jax.model import testing
from ofa_jax.model.transformer import OFATransformer
from tests import names as SN


def _reference_order(text_len, sizes, offsets, ranks, present):
  """Source indices in instruction order, built by walking the instruction."""
  starts = np.cumsum([text_len] + list(sizes))[:-1]
  slots = sorted((k for k in range(len(sizes)) if present[k]),
                 key=lambda k: ranks[k])
  order, t = [], 0
  for k in slots:
    order += list(range(t, offsets[k]))  # text before the slot
    t = offsets[k]
    order += list(range(starts[k], starts[k] + sizes[k]))
  order += list(range(t, text_len))
  for k in range(len(sizes)):
    if not present[k]:
      order += list(range(starts[k], starts[k] + sizes[k]))
  return order


def _random_placement(rs, text_len, num_slots):
  present = rs.rand(num_slots) < 0.75
  offsets = np.zeros(num_slots, np.int64)
  ranks = np.zeros(num_slots, np.int64)
  real = np.flatnonzero(present)
  offsets[real] = np.sort(rs.randint(0, text_len + 1, len(real)))
  ranks[real] = np.arange(len(real)) + rs.randint(0, 3)  # any increasing ranks
  # Absent slots carry arbitrary (even colliding) placement values.
  offsets[~present] = rs.randint(0, text_len + 1, (~present).sum())
  ranks[~present] = 0
  return offsets, ranks, present


@pytest.mark.parametrize("text_len,sizes", [(5, [2, 3, 1]), (0, [2, 1]),
                                             (4, [3])])
def test_destinations_match_instruction_walk(text_len, sizes):
  rs = np.random.RandomState(text_len)
  rows = [_random_placement(rs, text_len, len(sizes)) for _ in range(64)]
  offsets, ranks, present = (np.stack(x) for x in zip(*rows))
  layout.check_placement(text_len, sizes, offsets, ranks, present)
  @jax.jit
  def run(offsets, ranks, present):
    dest = layout.destinations(text_len, sizes, offsets, ranks, present)
    return dest, layout.gather_index(dest)

  dest, index = (np.asarray(x) for x in run(offsets, ranks, present))
  for i, row in enumerate(rows):
    assert sorted(dest[i]) == list(range(text_len + sum(sizes)))
    expected = _reference_order(text_len, sizes, *row)
    assert list(index[i]) == expected, (text_len, sizes, row)


def test_offset_zero_rank_zero_is_ofa_order():
  dest = layout.destinations(3, [4], jnp.zeros((1, 1), jnp.int32),
                             jnp.zeros((1, 1), jnp.int32),
                             jnp.ones((1, 1), bool))
  index = layout.gather_index(dest)
  assert list(np.asarray(index[0])) == [3, 4, 5, 6, 0, 1, 2]  # [image ; text]


def test_apply_gathers_trailing_dims():
  x = jnp.arange(2 * 3 * 2).reshape(2, 3, 2)
  index = jnp.array([[2, 0, 1], [0, 1, 2]])
  out = np.asarray(layout.apply(index, x))
  np.testing.assert_array_equal(out[0], np.asarray(x[0])[[2, 0, 1]])
  np.testing.assert_array_equal(out[1], np.asarray(x[1]))


@pytest.mark.parametrize("offsets,ranks,message", [
    ([[5, 0]], [[0, 1]], "outside"),
    ([[1, 2]], [[0, 0]], "share slot rank"),
    ([[2, 1]], [[0, 1]], "comes after"),
])
def test_check_placement_names_the_problem(offsets, ranks, message):
  with pytest.raises(ValueError, match=message) as info:
    layout.check_placement(4, [2, 2], offsets, ranks, [[True, True]],
                           where="task 'vqa'")
  assert "task 'vqa'" in str(info.value) and "example 0" in str(info.value)


def test_destinations_rejects_wrong_shapes():
  with pytest.raises(ValueError, match="placement"):
    layout.destinations(3, [2, 2], jnp.zeros((1, 1), jnp.int32),
                        jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))


@pytest.mark.slow
def test_model_is_equivariant_to_slot_placement():
  """OFA's biases depend on text indices and patch ids, not on sequence slots.

  So moving the image inside the text only permutes the encoder states and
  leaves the decoder logits unchanged: the layout places entries, the
  position scheme gives them meaning.
  """
  cfg = testing.small_config()
  batch = testing.random_batch(cfg, seed=3, num_images=2, num_input_pads=0)
  variables = testing.random_variables(cfg, batch, seed=1)
  model = OFATransformer(cfg)

  @jax.jit
  def run(batch):
    enc = model.apply(variables, batch, train=False, method=model.encode,
                      precompute_cross=False)
    return enc, model.apply(variables, batch, train=False)

  first = dict(batch)  # default placement: both images first, [img0; img1; text]
  moved = dict(batch)
  moved[SN.IMAGE_TEXT_OFFSET] = np.array([[2, 5], [0, 7]], np.int32)
  moved[SN.IMAGE_SLOT_RANK] = np.array([[0, 1], [0, 1]], np.int32)
  enc_a, logits_a = run(first)
  enc_b, logits_b = run(moved)
  np.testing.assert_allclose(logits_a, logits_b, atol=1e-5, rtol=1e-5)
  n = enc_a.hidden.shape[1] - 7  # patches of both images
  p = n // 2
  # Example 0 of `moved`: text 0-1, image 0, text 2-4, image 1, text 5-6.
  order = (list(range(n, n + 2)) + list(range(p)) + list(range(n + 2, n + 5))
           + list(range(p, n)) + list(range(n + 5, n + 7)))
  np.testing.assert_allclose(np.asarray(enc_b.hidden[0]),
                             np.asarray(enc_a.hidden[0])[order],
                             atol=1e-5, rtol=1e-5)
  assert not np.allclose(enc_b.hidden[0], enc_a.hidden[0], atol=1e-3)
