"""VIDEO frame sampling / resizing and MOTION normalization / length range."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofa_jax.modalities import get_processor
from ofa_jax.modalities import motion as motion_lib
from ofa_jax.modalities import video as video_lib
from tests.tf_testing import same_eager_and_in_tf_data, slot_context

VIDEO = get_processor("VIDEO")
MOTION = get_processor("MOTION")


def make_ctx(slot="clip", attrs=None, options=None, training=False, seed=None):
  return slot_context("t_dense", slot, attrs=attrs, options=options, training=training,
                      seed=seed)


def numbered_frames(t, h=6, w=8):
  """Frame i is a solid grey of value 10 * i: the output tells which were taken."""
  return np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(t)])


def frame_ids(values, mask):
  grey = (values[:, 0, 0, 0] * 0.5 + 0.5) * 255  # undo mean / std 0.5
  return [int(round(g / 10)) if m else None for g, m in zip(grey, mask)]


def png(frame):
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, "PNG")
  return buf.getvalue()


# ---------------------------------------------------------------------------
# VIDEO
# ---------------------------------------------------------------------------
def test_eval_sampling_takes_segment_middles_eager_and_in_tf_data():
  ctx = make_ctx(attrs={"n_frames": 4, "image_size": 8})
  out = same_eager_and_in_tf_data(lambda v: VIDEO.preprocess_input(v, ctx), numbered_frames(20))
  assert out.valid and out.values.shape == (4, 8, 8, 3)
  assert out.mask.tolist() == [1, 1, 1, 1]
  assert frame_ids(out.values, out.mask) == [2, 7, 12, 17]  # floor(5 i + 2.5)


def test_short_clip_is_padded_not_invented():
  ctx = make_ctx(options={"video_n_frames": 5, "image_size": 8})
  out = same_eager_and_in_tf_data(lambda v: VIDEO.preprocess_input(v, ctx), numbered_frames(3))
  assert out.valid and out.mask.tolist() == [1, 1, 1, 0, 0]
  assert frame_ids(out.values, out.mask)[:3] == [0, 1, 2]
  np.testing.assert_array_equal(out.values[3:], 0.0)


def test_training_sampling_is_seeded_and_stays_in_segments():
  frames = tf.constant(numbered_frames(24))
  picks = set()
  for s in range(8):
    ctx = make_ctx(attrs={"n_frames": 4, "image_size": 4}, training=True, seed=[s, 7])
    out = VIDEO.preprocess_input(frames, ctx)
    again = VIDEO.preprocess_input(frames, ctx)
    np.testing.assert_array_equal(out.values.numpy(), again.values.numpy())
    ids = frame_ids(out.values.numpy(), out.mask.numpy())
    assert all(6 * i <= f < 6 * (i + 1) for i, f in enumerate(ids)), ids
    picks.add(tuple(ids))
  assert len(picks) > 1


def test_sample_frame_indices_bounds():
  for total in range(0, 12):
    idx, mask = video_lib.sample_frame_indices(tf.constant(total), 5)
    idx, mask = idx.numpy(), mask.numpy()
    assert mask.sum() == min(total, 5)
    assert (idx >= 0).all() and (idx < max(total, 1)).all()
    assert (np.diff(idx[mask == 1]) > 0).all()  # distinct, increasing


def test_encoded_frames_match_uint8_frames_and_corrupt_frame_is_invalid():
  raw = numbered_frames(6)
  ctx = make_ctx(attrs={"n_frames": 3, "image_size": 8})
  from_raw = same_eager_and_in_tf_data(lambda v: VIDEO.preprocess_input(v, ctx), raw)
  encoded = [png(f) for f in raw]
  from_png = same_eager_and_in_tf_data(lambda v: VIDEO.preprocess_input(v, ctx), encoded)
  assert from_png.valid
  np.testing.assert_allclose(from_png.values, from_raw.values, atol=1e-5)
  sampled = video_lib.sample_frame_indices(tf.constant(6), 3)[0].numpy()
  broken = list(encoded)
  broken[int(sampled[1])] = encoded[0][:20]  # truncated PNG on a sampled frame
  out = same_eager_and_in_tf_data(lambda v: VIDEO.preprocess_input(v, ctx), broken)
  assert not out.valid and out.mask.tolist() == [0, 0, 0]


def test_empty_clips_are_invalid_in_a_running_dataset():
  ctx = make_ctx(attrs={"n_frames": 2, "image_size": 4})
  clips = [numbered_frames(4), numbered_frames(4)[:0], numbered_frames(1)]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(clips), output_signature=tf.TensorSpec([None, 6, 8, 3], tf.uint8))
  got = [(bool(o.valid), o.mask.tolist()) for o in
         ds.map(lambda v: VIDEO.preprocess_input(v, ctx)).as_numpy_iterator()]
  assert got == [(True, [1, 1]), (False, [0, 0]), (True, [1, 0])]


def test_video_bad_inputs_raise():
  with pytest.raises(ValueError, match="'clip'.*string vector"):
    VIDEO.preprocess_input(tf.constant(b"x.mp4"), make_ctx())
  with pytest.raises(ValueError, match="uint8 \\[T, H, W, 3\\]"):
    VIDEO.preprocess_input(tf.zeros([2, 4, 4, 3]), make_ctx())
  with pytest.raises(ValueError, match="only be an input"):
    VIDEO.preprocess_target(tf.constant(numbered_frames(2)), make_ctx())


# ---------------------------------------------------------------------------
# MOTION
# ---------------------------------------------------------------------------
def motion_clip(t, d=4, seed=0):
  return np.random.RandomState(seed).randn(t, d).astype(np.float32) * 3 + 1


def test_normalization_padding_eager_and_in_tf_data():
  clip = motion_clip(7)
  stats = {"mean": np.arange(4, dtype=np.float32), "std": np.full(4, 2.0, np.float32)}
  ctx = make_ctx(attrs={"min_length": 3, "max_length": 8},
                 options={"motion_stats": stats, "motion_length": 10})
  out = same_eager_and_in_tf_data(lambda v: MOTION.preprocess_input(v, ctx), clip)
  assert out.valid and out.values.shape == (10, 4)
  assert out.mask.tolist() == [1] * 7 + [0] * 3
  np.testing.assert_allclose(out.values[:7], (clip - stats["mean"]) / 2.0, atol=1e-6)
  np.testing.assert_array_equal(out.values[7:], 0.0)
  back = MOTION.postprocess(out.values, {"mask": out.mask, "motion_stats": stats})
  np.testing.assert_allclose(back, clip, atol=1e-5)


def test_short_clip_invalid_long_clip_centre_cropped():
  ctx = make_ctx(attrs={"min_length": 5, "max_length": 6},
                 options={"motion_normalize": False})
  short = same_eager_and_in_tf_data(lambda v: MOTION.preprocess_input(v, ctx), motion_clip(4))
  assert not short.valid and short.mask.sum() == 0
  assert short.values.shape == (6, 4)
  clip = motion_clip(11)
  out = same_eager_and_in_tf_data(lambda v: MOTION.preprocess_input(v, ctx), clip)
  assert out.valid and out.mask.tolist() == [1] * 6
  np.testing.assert_array_equal(out.values, clip[2:8])  # (11 - 6) // 2 = 2


def test_training_crop_is_seeded_and_a_real_window():
  clip = np.arange(40, dtype=np.float32).reshape(20, 2)
  starts = set()
  for s in range(10):
    ctx = make_ctx(attrs={"min_length": 2, "max_length": 5}, training=True,
                   seed=[s, 1], options={"motion_normalize": False})
    out = MOTION.preprocess_target(tf.constant(clip), ctx).values.numpy()
    again = MOTION.preprocess_target(tf.constant(clip), ctx).values.numpy()
    np.testing.assert_array_equal(out, again)
    start = int(out[0, 0]) // 2
    np.testing.assert_array_equal(out, clip[start:start + 5])
    starts.add(start)
  assert len(starts) > 1


def test_sample_rate_subsamples_frames():
  clip = np.arange(24, dtype=np.float32).reshape(12, 2)
  ctx = make_ctx(attrs={"min_length": 2, "max_length": 6, "sample_rate": 3},
                 options={"motion_normalize": False})
  out = MOTION.preprocess_input(tf.constant(clip), ctx)
  assert out.mask.numpy().tolist() == [1, 1, 1, 1, 0, 0]
  np.testing.assert_array_equal(out.values.numpy()[:4], clip[::3])


def test_compute_motion_stats_matches_numpy():
  clips = [motion_clip(5, seed=1), motion_clip(9, seed=2)]
  stats = motion_lib.compute_motion_stats(clips)
  allf = np.concatenate(clips)
  np.testing.assert_allclose(stats["mean"], allf.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["std"], allf.std(0), rtol=1e-5)
  with pytest.raises(ValueError, match="clip 1 has D=3"):
    motion_lib.compute_motion_stats([motion_clip(3), motion_clip(3, d=3)])


def test_motion_configuration_errors():
  with pytest.raises(ValueError, match="'clip'.*motion_stats"):
    MOTION.preprocess_input(tf.constant(motion_clip(12)), make_ctx())
  bad_stats = {"mean": np.zeros(3), "std": np.ones(3)}
  with pytest.raises(ValueError, match="D=4 but motion_stats says 3"):
    MOTION.preprocess_input(tf.constant(motion_clip(12)),
                            make_ctx(options={"motion_stats": bad_stats}))
  with pytest.raises(ValueError, match="min_length <= max_length"):
    MOTION.preprocess_input(
        tf.constant(motion_clip(12)),
        make_ctx(attrs={"min_length": 9, "max_length": 4},
                 options={"motion_normalize": False}))


def test_choose_span_window_and_soft_trim_stay_in_range():
  sizes, starts = set(), set()
  for s in range(30):
    seed = tf.constant([s, 5], tf.int32)
    start, size = motion_lib.choose_span(tf.constant(40), 4, 12, seed,
                                         soft_trim=0.3, window=True)
    start, size = int(start), int(size)
    assert 4 <= size <= 12 and 0 <= start and start + size <= 40
    sizes.add(size)
    starts.add(start)
  assert len(sizes) > 3 and len(starts) > 3
  # Evaluation ignores both: the centre max_length frames.
  start, size = motion_lib.choose_span(tf.constant(40), 4, 12, None, soft_trim=0.3,
                                       window=True)
  assert (int(start), int(size)) == (14, 12)
  # A soft trim that would leave fewer than min_length frames is not made.
  for s in range(10):
    start, size = motion_lib.choose_span(tf.constant(6), 6, 12,
                                         tf.constant([s, 0], tf.int32), soft_trim=0.9)
    assert (int(start), int(size)) == (0, 6)


def test_window_attribute_in_training_gives_variable_lengths():
  clip = np.arange(60, dtype=np.float32).reshape(30, 2)
  lengths = set()
  for s in range(8):
    ctx = make_ctx(attrs={"min_length": 3, "max_length": 10, "window": 1},
                   options={"motion_normalize": False}, training=True, seed=[s, 2])
    out = MOTION.preprocess_input(tf.constant(clip), ctx)
    n = int(out.mask.numpy().sum())
    assert 3 <= n <= 10 and bool(out.valid)
    first = int(out.values.numpy()[0, 0]) // 2
    np.testing.assert_array_equal(out.values.numpy()[:n], clip[first:first + n])
    lengths.add(n)
  assert len(lengths) > 1
  with pytest.raises(ValueError, match="anchor_frame"):
    MOTION.preprocess_input(tf.constant(clip), make_ctx(
        attrs={"anchor_frame": 0}, options={"motion_normalize": False}))
