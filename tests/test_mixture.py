"""A SeqIO mixture of demo tasks over different modalities, through
`seqio.get_dataset` + `OFAFeatureConverter`: one structure, static shapes,
reproducible from the seed; packing of a token-only mixture."""

from __future__ import annotations

import numpy as np
import pytest
import seqio

from ofa_jax import features as F
from ofa_jax import plan
from ofa_jax.feature_converter import OFAFeatureConverter
from tests import names as SN
from tasks import demo

COUNTS = {"train": 12, "validation": 6, "test": 6}
MIXED = ("demo_caption", "demo_vqa", "demo_grounding", "demo_detection",
         "demo_sudoku")
LENGTHS = dict(demo.FEATURE_LENGTHS)


@pytest.fixture(scope="module")
def mixtures():
  demo.register_demo_tasks(num_examples=COUNTS, replace=True)
  plan.register_mixture("test_mixed", [(n, 1.0) for n in MIXED], replace=True)
  plan.register_mixture("test_tokens_only", [("demo_sudoku", 1.0),
                                             ("demo_infilling", 1.0)],
                        replace=True)
  yield
  for name in ("test_mixed", "test_tokens_only"):
    seqio.MixtureRegistry.remove(name)


def _batches(name, lengths, n, seed, pack=False, batch_size=4):
  ds = seqio.get_dataset(name, lengths, dataset_split="train", shuffle=True,
                         seed=seed, batch_size=batch_size, num_epochs=None,
                         feature_converter=OFAFeatureConverter(pack=pack))
  return ds, list(ds.take(n).as_numpy_iterator())


@pytest.mark.slow
def test_mixture_batches_have_one_structure_and_static_shapes(mixtures):
  ds, batches = _batches("test_mixed", LENGTHS, n=6, seed=11)
  for key, spec in ds.element_spec.items():
    assert spec.shape.is_fully_defined(), (key, spec)
  expected = {k: (v.shape, v.dtype) for k, v in batches[0].items()}
  for b in batches:
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == expected
  b = batches[0]
  assert b[F.ENCODER_INPUT_TOKENS].shape == (4, LENGTHS["inputs"])
  assert b[F.DECODER_TARGET_TOKENS].shape == (4, LENGTHS["targets"])
  assert b[SN.IMAGES].shape == (4, 1, 64, 64, 3)
  assert b[SN.AUDIO].shape[:2] == (4, 0)
  # Several tasks, text-only ones with image_mask 0 and image tasks with 1.
  task_ids = np.concatenate([x[F.TASK_ID] for x in batches])
  ids = {F.task_id_of(n): n for n in MIXED}
  seen = {ids[int(t)] for t in task_ids}
  assert len(seen) >= 4, seen
  masks = np.concatenate([x[SN.IMAGE_MASK][:, 0] for x in batches])
  sudoku = task_ids == F.task_id_of("demo_sudoku")
  assert np.all(masks[sudoku] == 0) and np.all(masks[~sudoku] == 1)
  # Every row: targets end in </s> before padding, loss only on real tokens.
  for x in batches:
    w = x[F.DECODER_LOSS_WEIGHTS]
    assert np.all(w[x[F.DECODER_TARGET_TOKENS] == F.PAD_ID] == 0)
    np.testing.assert_array_equal(x[F.DECODER_INPUT_TOKENS][:, 0], F.BOS_ID)
  # Same seed, same batches.
  _, again = _batches("test_mixed", LENGTHS, n=6, seed=11)
  for x, y in zip(batches, again):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.slow
def test_token_only_mixture_packs(mixtures):
  lengths = dict(LENGTHS, images=0, target_image=0, inputs=128, targets=96)
  ds, batches = _batches("test_tokens_only", lengths, n=2, seed=3, pack=True,
                         batch_size=2)
  b = batches[0]
  assert set(b) == {F.ENCODER_INPUT_TOKENS, F.DECODER_TARGET_TOKENS,
                    F.DECODER_INPUT_TOKENS, F.DECODER_LOSS_WEIGHTS,
                    F.DECODER_TARGET_KINDS, F.DECODER_PROMPT_MASK,
                    F.ENCODER_SEGMENT_IDS,
                    F.ENCODER_POSITIONS, F.DECODER_SEGMENT_IDS,
                    F.DECODER_POSITIONS}
  assert b[F.ENCODER_INPUT_TOKENS].shape == (2, 128)
  # Several examples share a row.
  assert max(x[F.ENCODER_SEGMENT_IDS].max() for x in batches) >= 2
  seg = b[F.DECODER_SEGMENT_IDS]
  starts = (b[F.DECODER_POSITIONS] == 0) & (seg > 0)
  np.testing.assert_array_equal(b[F.DECODER_INPUT_TOKENS][starts], F.BOS_ID)
  assert np.all(b[F.ENCODER_INPUT_TOKENS][b[F.ENCODER_SEGMENT_IDS] == 0]
                == F.PAD_ID)


@pytest.mark.slow
def test_packing_with_dense_lengths_is_refused(mixtures):
  # The lengths decide: a dense length > 0 means the batches carry that stream.
  with pytest.raises(ValueError, match="pack"):
    seqio.get_dataset("demo_sudoku", LENGTHS, dataset_split="train",
                      shuffle=False, batch_size=2,
                      feature_converter=OFAFeatureConverter(pack=True))
