"""OFAFeatureConverter: padding with <pad>=1, the right shift, loss weights, dense
streams with static shapes, and packing of token-only examples."""

from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from ofa_jax import features as F
from ofa_jax.feature_converter import OFAFeatureConverter
from tests import names as SN

S = 8  # image side in these tests


def _example(inputs, targets, loss_mask, kinds, *, n_images=0, weight=1.0,
             task_id=7, audio_frames=0):
  """One task example in the shared layout; absent streams are zero-length."""
  return {
      F.INPUTS: np.array(inputs, np.int32),
      F.TARGETS: np.array(targets, np.int32),
      F.TARGET_LOSS_MASK: np.array(loss_mask, np.int32),
      F.TARGET_KINDS: np.array(kinds, np.int32),
      F.SAMPLE_WEIGHT: np.float32(weight),
      F.TASK_ID: np.int32(task_id),
      SN.IMAGES: np.full([n_images, S, S, 3], 0.5, np.float32),
      SN.IMAGE_MASK: np.ones([n_images], np.int32),
      SN.IMAGE_TEXT_OFFSET: np.full([n_images], 1, np.int32),
      SN.IMAGE_SLOT_RANK: np.arange(n_images, dtype=np.int32),
      SN.IMAGE_GEOMETRY: np.ones([n_images, 6], np.float32),
      SN.AUDIO: np.ones([audio_frames, 80], np.float32),
      SN.AUDIO_MASK: np.ones([audio_frames], np.int32),
      SN.AUDIO_TEXT_OFFSET: np.zeros([1], np.int32),
      SN.AUDIO_SLOT_RANK: np.zeros([1], np.int32),
      SN.VIDEO: np.zeros([0, S, S, 3], np.float32),
      SN.VIDEO_MASK: np.zeros([0], np.int32),
      SN.VIDEO_TEXT_OFFSET: np.zeros([1], np.int32),
      SN.VIDEO_SLOT_RANK: np.zeros([1], np.int32),
      SN.MOTION: np.zeros([0, 12], np.float32),
      SN.MOTION_MASK: np.zeros([0], np.int32),
      SN.MOTION_TEXT_OFFSET: np.zeros([1], np.int32),
      SN.MOTION_SLOT_RANK: np.zeros([1], np.int32),
      SN.TARGET_IMAGE: np.zeros([0, 0, 3], np.float32),
      SN.TARGET_IMAGE_MASK: np.zeros([1], np.int32),
      SN.TARGET_AUDIO: np.zeros([0, 80], np.float32),
      SN.TARGET_AUDIO_MASK: np.zeros([0], np.int32),
      SN.TARGET_MOTION: np.zeros([0, 12], np.float32),
      SN.TARGET_MOTION_MASK: np.zeros([0], np.int32),
  }


def _dataset(examples):
  """A dataset whose leading axes are dynamic, as the plan emits them."""
  def gen():
    yield from examples
  first = examples[0]
  sig = {}
  for k, v in first.items():
    shape = [None] + list(v.shape[1:]) if v.ndim else []
    if k == SN.TARGET_IMAGE:
      shape = [None, None, 3]
    sig[k] = tf.TensorSpec(shape, tf.as_dtype(v.dtype))
  return tf.data.Dataset.from_generator(gen, output_signature=sig)


def _lengths(**kw):
  lengths = {k: 0 for k in SN.LENGTH_KEYS}
  lengths.update(kw)
  return lengths


def test_padding_shift_and_loss_weights():
  ex = _example([0, 10, 11, 2], [5, 6, 7, 2], [0, 1, 1, 1], [1, 1, 1, 1],
                n_images=1, weight=0.5)
  conv = OFAFeatureConverter(pack=False)
  ds = conv(_dataset([ex]), _lengths(inputs=6, targets=6, images=2, audio=3))
  (out,) = list(ds.as_numpy_iterator())
  np.testing.assert_array_equal(out[F.ENCODER_INPUT_TOKENS], [0, 10, 11, 2, 1, 1])
  np.testing.assert_array_equal(out[F.DECODER_TARGET_TOKENS], [5, 6, 7, 2, 1, 1])
  np.testing.assert_array_equal(out[F.DECODER_INPUT_TOKENS], [0, 5, 6, 7, 2, 1])
  np.testing.assert_allclose(out[F.DECODER_LOSS_WEIGHTS], [0, .5, .5, .5, 0, 0])
  np.testing.assert_array_equal(out[F.DECODER_TARGET_KINDS], [1, 1, 1, 1, 0, 0])
  assert out[F.TASK_ID] == 7
  assert out[SN.IMAGES].shape == (2, S, S, 3)
  np.testing.assert_array_equal(out[SN.IMAGE_MASK], [1, 0])
  np.testing.assert_allclose(out[SN.IMAGES][0], 0.5)
  np.testing.assert_allclose(out[SN.IMAGES][1], 0.0)
  assert out[SN.IMAGE_GEOMETRY].shape == (2, 6)
  assert out[SN.AUDIO].shape == (3, 80)
  np.testing.assert_array_equal(out[SN.AUDIO_MASK], [0, 0, 0])
  assert out[SN.AUDIO_TEXT_OFFSET].shape == (1,)
  assert out[SN.TARGET_IMAGE].shape == (0, 0, 3)
  assert out[SN.TARGET_IMAGE_MASK].shape == (1,)
  # Static shapes in the dataset spec (one jitted step for the whole mixture).
  for k, spec in ds.element_spec.items():
    assert spec.shape.is_fully_defined(), k


def test_batched_mixed_examples_have_one_structure():
  a = _example([0, 9, 2], [4, 2], [1, 1], [2, 1], n_images=1)
  b = _example([0, 9, 9, 9, 2], [4, 4, 4, 2], [1, 1, 1, 1], [1, 1, 1, 1],
               audio_frames=2, task_id=3)
  conv = OFAFeatureConverter(pack=False)
  lengths = _lengths(inputs=8, targets=5, images=1, audio=4, target_image=4)
  ds = conv(_dataset([a, b]), lengths).batch(2, drop_remainder=True)
  (batch,) = list(ds.as_numpy_iterator())
  assert batch[F.ENCODER_INPUT_TOKENS].shape == (2, 8)
  assert batch[SN.AUDIO].shape == (2, 4, 80)
  np.testing.assert_array_equal(batch[SN.AUDIO_MASK], [[0] * 4, [1, 1, 0, 0]])
  np.testing.assert_array_equal(batch[SN.IMAGE_MASK], [[1], [0]])
  assert batch[SN.TARGET_IMAGE].shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(batch[F.TASK_ID], [7, 3])
  lengths_out = conv.get_model_feature_lengths(lengths)
  for k, v in batch.items():
    if v.ndim > 1:
      assert v.shape[1] == lengths_out[k], k


def test_too_long_inputs_fail_the_length_check():
  ex = _example([0, 1, 1, 1, 1, 2], [2], [1], [1])
  conv = OFAFeatureConverter(pack=False)
  ds = conv(_dataset([ex]), _lengths(inputs=4, targets=4))
  with pytest.raises(tf.errors.InvalidArgumentError, match="inputs"):
    list(ds.as_numpy_iterator())


def test_packing_matches_seqio_layout():
  # Inputs start with <s>=0 and masks hold zeros: both must survive packing.
  a = _example([0, 8, 5, 2], [3, 9, 2], [0, 1, 1], [1, 1, 1], weight=2.0)
  b = _example([0, 4, 9, 3, 2], [4, 2], [1, 1], [2, 1])
  conv = OFAFeatureConverter(pack=True)
  ds = conv(_dataset([a, b]), _lengths(inputs=10, targets=7))
  seqio.test_utils.assert_dataset(ds, {
      F.ENCODER_INPUT_TOKENS: [0, 8, 5, 2, 0, 4, 9, 3, 2, 1],
      F.ENCODER_SEGMENT_IDS: [1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
      F.ENCODER_POSITIONS: [0, 1, 2, 3, 0, 1, 2, 3, 4, 0],
      F.DECODER_TARGET_TOKENS: [3, 9, 2, 4, 2, 1, 1],
      F.DECODER_INPUT_TOKENS: [0, 3, 9, 0, 4, 1, 1],
      F.DECODER_LOSS_WEIGHTS: [0., 2., 2., 1., 1., 0., 0.],
      F.DECODER_TARGET_KINDS: [1, 1, 1, 2, 1, 0, 0],
      F.DECODER_PROMPT_MASK: [1, 0, 0, 0, 0, 0, 0],
      F.DECODER_SEGMENT_IDS: [1, 1, 1, 2, 2, 0, 0],
      F.DECODER_POSITIONS: [0, 1, 2, 0, 1, 0, 0],
  })


def test_packing_with_dense_streams_is_refused():
  ex = _example([0, 2], [2], [1], [1], n_images=1)
  conv = OFAFeatureConverter(pack=True)
  with pytest.raises(ValueError, match="images"):
    conv(_dataset([ex]), _lengths(inputs=4, targets=4, images=1))


def test_missing_layout_features_are_named():
  ex = _example([0, 2], [2], [1], [1])
  del ex[F.TARGET_KINDS]
  conv = OFAFeatureConverter(pack=False)
  with pytest.raises(ValueError, match="target_kinds"):
    conv(_dataset([ex]), _lengths(inputs=4, targets=4))


def test_decoder_inputs_follow_target_inputs_and_prompt_ignores_weight():
  # A forced prompt (5, 6), then the answer; target_inputs noised at one position;
  # sample weight 0, which must not turn the whole target into "prompt".
  ex = _example([0, 2], [5, 6, 7, 8, 2], [0, 0, 1, 1, 1], [1] * 5, weight=0.0)
  ex[F.TARGET_INPUTS] = np.array([5, 6, 7, 99, 2], np.int32)
  conv = OFAFeatureConverter(pack=False)
  (out,) = list(conv(_dataset([ex]), _lengths(inputs=4, targets=7))
                .as_numpy_iterator())
  np.testing.assert_array_equal(out[F.DECODER_TARGET_TOKENS],
                                [5, 6, 7, 8, 2, 1, 1])
  np.testing.assert_array_equal(out[F.DECODER_INPUT_TOKENS],
                                [0, 5, 6, 7, 99, 2, 1])
  np.testing.assert_array_equal(out[F.DECODER_PROMPT_MASK],
                                [1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(out[F.DECODER_LOSS_WEIGHTS], 0.0)
  # Without target_inputs (older datasets) the targets are shifted.
  del ex[F.TARGET_INPUTS]
  (out,) = list(conv(_dataset([ex]), _lengths(inputs=4, targets=7))
                .as_numpy_iterator())
  np.testing.assert_array_equal(out[F.DECODER_INPUT_TOKENS],
                                [0, 5, 6, 7, 8, 2, 1])


def test_prompt_mask_excludes_a_lone_untrained_eos():
  # A dense-target task's token stream is one untrained </s>: no prompt.
  ex = _example([0, 2], [2], [0], [1])
  (out,) = list(OFAFeatureConverter(pack=False)(
      _dataset([ex]), _lengths(inputs=4, targets=3)).as_numpy_iterator())
  np.testing.assert_array_equal(out[F.DECODER_PROMPT_MASK], [0, 0, 0])


def test_packing_shifts_target_inputs_per_segment():
  a = _example([0, 8, 2], [3, 9, 2], [0, 1, 1], [1, 1, 1], weight=0.0)
  a[F.TARGET_INPUTS] = np.array([3, 17, 2], np.int32)
  b = _example([0, 4, 2], [4, 2], [1, 1], [2, 1])
  b[F.TARGET_INPUTS] = np.array([21, 2], np.int32)
  ds = OFAFeatureConverter(pack=True)(_dataset([a, b]),
                                      _lengths(inputs=8, targets=6))
  (out,) = list(ds.as_numpy_iterator())
  np.testing.assert_array_equal(out[F.DECODER_TARGET_TOKENS], [3, 9, 2, 4, 2, 1])
  np.testing.assert_array_equal(out[F.DECODER_INPUT_TOKENS], [0, 3, 17, 0, 21, 1])
  np.testing.assert_array_equal(out[F.DECODER_PROMPT_MASK], [1, 0, 0, 0, 0, 0])
