"""IMAGE preprocessing: decode paths, guarded invalid inputs, geometry, variants."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofa_jax import data_stats
from ofa_jax.modalities import get_processor
from ofa_jax.modalities import image_ops
from tests.tf_testing import assert_same, eager_and_in_tf_data, slot_context


def make_ctx(attrs=None, options=None, training=False, seed=None):
  return slot_context("t_image", "img", attrs=attrs, options=options, training=training,
                      seed=seed)


def encode(array: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt)
  return buf.getvalue()


def rect_image(h=40, w=60, box=(10, 20, 18, 32), value=255):
  """Black image with a bright rectangle [y0, x0, y1, x1) (half-open)."""
  a = np.zeros((h, w, 3), np.uint8)
  y0, x0, y1, x1 = box
  a[y0:y1, x0:x1] = value
  return a


PROC = get_processor("IMAGE")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_encoded_bytes_decode_eager_and_in_tf_data(fmt):
  ctx = make_ctx(options={"image_size": 16})
  data = encode(rect_image(), fmt)
  eager, graph = eager_and_in_tf_data(lambda v: PROC.preprocess_input(v, ctx), data)
  assert_same(eager, graph)
  assert eager.valid and eager.mask.tolist() == [1]
  assert eager.values.shape == (16, 16, 3) and eager.values.dtype == np.float32
  assert -1.0 <= eager.values.min() and eager.values.max() <= 1.0
  assert eager.values.max() > 0.5  # the bright rectangle survives
  np.testing.assert_allclose(eager.geometry, [40, 60, 16 / 40, 16 / 60, 0, 0],
                             rtol=1e-6)


def test_path_and_decoded_array_give_the_same_pixels(tmp_path):
  ctx = make_ctx(options={"image_size": 24})
  array = rect_image()
  path = tmp_path / "x.png"
  path.write_bytes(encode(array, "PNG"))
  fn = lambda v: PROC.preprocess_input(v, ctx)  # noqa: E731
  from_path, from_path_ds = eager_and_in_tf_data(fn, str(path))
  from_bytes, _ = eager_and_in_tf_data(fn, encode(array, "PNG"))
  from_array, from_array_ds = eager_and_in_tf_data(fn, array)
  assert_same(from_path, from_path_ds)
  assert_same(from_array, from_array_ds)
  assert from_path.valid and from_array.valid
  np.testing.assert_array_equal(from_path.values, from_bytes.values)
  np.testing.assert_allclose(from_path.values, from_array.values, atol=1e-6)


def test_grayscale_png_becomes_three_channels():
  ctx = make_ctx(options={"image_size": 8})
  gray = np.full((10, 12), 51, np.uint8)
  out = PROC.preprocess_input(tf.constant(encode(gray, "PNG")), ctx)
  assert bool(out.valid) and out.values.shape == (8, 8, 3)
  np.testing.assert_allclose(out.values.numpy(), (51 / 255 - 0.5) / 0.5, atol=1e-5)


def _corrupt_values(tmp_path):
  jpeg = encode(rect_image(), "JPEG")
  png = encode(rect_image(), "PNG")
  not_image = tmp_path / "notes.txt"
  not_image.write_text("hello, not an image")
  return {
      "truncated_jpeg": jpeg[: len(jpeg) // 2],
      "truncated_png": png[: len(png) - 20],
      "jpeg_header_only": jpeg[:4],
      "random_bytes": np.random.RandomState(0).bytes(300),
      "empty": b"",
      "missing_file": str(tmp_path / "does_not_exist.jpg").encode(),
      "text_file": str(not_image).encode(),
  }


def test_corrupt_inputs_are_invalid_eagerly(tmp_path):
  ctx = make_ctx(options={"image_size": 8})
  for name, value in _corrupt_values(tmp_path).items():
    out = PROC.preprocess_input(tf.constant(value), ctx)
    assert not bool(out.valid), name
    assert out.mask.numpy().tolist() == [0], name


def test_dataset_with_corrupt_examples_runs_to_the_end(tmp_path):
  """Inside tf.data the same corrupt values are invalid and the dataset goes on."""
  ctx = make_ctx(options={"image_size": 8})
  good = encode(rect_image(), "JPEG")
  bad = list(_corrupt_values(tmp_path).values())
  values = [good] + bad + [good]
  ds = tf.data.Dataset.from_tensor_slices(values).map(
      lambda v: PROC.preprocess_input(v, ctx))
  outs = list(ds.as_numpy_iterator())
  assert [bool(o.valid) for o in outs] == [True] + [False] * len(bad) + [True]
  assert [o.mask.tolist() for o in outs] == [[1]] + [[0]] * len(bad) + [[1]]
  np.testing.assert_array_equal(
      outs[0].values, PROC.preprocess_input(tf.constant(good), ctx).values.numpy())


@pytest.mark.parametrize("box", [(10, 20, 18, 32), (2, 40, 12, 56)])
def test_geometry_maps_points_to_resized_image(box):
  """Centroid of a rectangle: (c + 0.5) * scale + offset - 0.5 in the output."""
  h, w, size = 40, 60, 32
  ctx = make_ctx(options={"image_size": size})
  out = PROC.preprocess_input(tf.constant(rect_image(h, w, box)), ctx)
  g = out.geometry.numpy()
  y0, x0, y1, x1 = box
  cy, cx = (y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5  # centroid in pixel indices
  want_y = (cy + 0.5) * g[2] + g[4] - 0.5
  want_x = (cx + 0.5) * g[3] + g[5] - 0.5
  brightness = (out.values.numpy()[..., 0] + 1.0).clip(0)
  ys, xs = np.mgrid[:size, :size]
  got_y = (brightness * ys).sum() / brightness.sum()
  got_x = (brightness * xs).sum() / brightness.sum()
  assert abs(got_y - want_y) < 0.3 and abs(got_x - want_x) < 0.3
  # And the rectangle's corners map to the bright region's extent.
  bright = np.argwhere(brightness > 1.0)
  assert abs(bright[:, 0].min() - y0 * g[2]) <= 1.0
  assert abs(bright[:, 1].max() + 1 - x1 * g[3]) <= 1.0


def test_imagenet_variant_crop_geometry_and_normalization():
  h, w, size, box = 40, 60, 32, (14, 26, 24, 36)
  ctx = make_ctx(attrs={"preprocess": "imagenet"}, options={"image_size": size})
  out = PROC.preprocess_input(tf.constant(rect_image(h, w, box, value=200)), ctx)
  g = out.geometry.numpy()
  short_target = math.floor(size / 0.875)
  assert g[2] == pytest.approx(short_target / h) and g[3] == pytest.approx(
      round(w * short_target / h) / w)
  assert g[4] == -((short_target - size) // 2)  # centre crop
  # Background pixel = ImageNet-normalized black.
  black = (0 - np.array(image_ops.IMAGENET_MEAN)) / np.array(image_ops.IMAGENET_STD)
  np.testing.assert_allclose(out.values.numpy()[0, 0], black, atol=1e-4)
  y0, x0, y1, x1 = box
  bright = np.argwhere(out.values.numpy()[..., 1] > 0.5)
  centre = bright.mean(0)
  want = [((y0 + y1) / 2) * g[2] + g[4] - 0.5, ((x0 + x1) / 2) * g[3] + g[5] - 0.5]
  np.testing.assert_allclose(centre, want, atol=0.6)


def test_training_random_crop_is_seeded():
  ctx_of = lambda seed: make_ctx(  # noqa: E731
      attrs={"preprocess": "imagenet"}, options={"image_size": 16}, training=True,
      seed=seed)
  image = tf.constant(rect_image(20, 60))
  a = PROC.preprocess_input(image, ctx_of([1, 2]))
  b = PROC.preprocess_input(image, ctx_of([1, 2]))
  np.testing.assert_array_equal(a.values.numpy(), b.values.numpy())
  offsets = {float(PROC.preprocess_input(image, ctx_of([s, 0])).geometry[5])
             for s in range(6)}
  assert len(offsets) > 1  # the crop position depends on the seed
  # Without a seed (evaluation) the crop is the centre one.
  eval_ctx = make_ctx(attrs={"preprocess": "imagenet"}, options={"image_size": 16})
  g = PROC.preprocess_input(image, eval_ctx).geometry.numpy()
  assert g[5] == -((round(60 * 18 / 20) - 16) // 2)


def test_solid_colour_normalization_and_mask_ratio():
  size = 20
  ctx = make_ctx(attrs={"mask_ratio": "0.25"}, options={"image_size": size})
  out = PROC.preprocess_input(tf.constant(np.full((30, 30, 3), 204, np.uint8)), ctx)
  pixels = out.values.numpy()
  expected = (204 / 255 - 0.5) / 0.5
  zero = np.all(pixels == 0, axis=-1)
  side = round(size * math.sqrt(0.25))
  assert zero.sum() == side * side
  lo = (size - side) // 2
  assert zero[lo:lo + side, lo:lo + side].all()
  np.testing.assert_allclose(pixels[~zero], expected, atol=1e-5)


def test_target_side_pixels_in_minus_one_one():
  ctx = make_ctx(options={"target_image_size": 12})
  array = np.full((30, 20, 3), 51, np.uint8)
  eager, graph = eager_and_in_tf_data(lambda v: PROC.preprocess_target(v, ctx),
                                      encode(array, "PNG"))
  assert_same(eager, graph)
  assert eager.valid and eager.mask.tolist() == [1]
  assert eager.values.shape == (12, 12, 3)
  np.testing.assert_allclose(eager.values, 51 / 127.5 - 1, atol=1e-4)
  bad, _ = eager_and_in_tf_data(lambda v: PROC.preprocess_target(v, ctx),
                                b"\x89PNG\r\n\x1a\nxx")
  assert not bad.valid and bad.mask.tolist() == [0]
  np.testing.assert_array_equal(PROC.postprocess(eager.values, {}),
                                np.full((12, 12, 3), 51, np.uint8))
  # On a target slot the image_size attribute wins over the task option.
  attr_ctx = make_ctx(attrs={"image_size": 10}, options={"target_image_size": 12,
                                                         "image_size": 99})
  assert PROC.preprocess_target(tf.constant(array), attr_ctx).values.shape == (10, 10, 3)
  assert PROC.preprocess_target(tf.constant(array), make_ctx()).values.shape == (
      256, 256, 3)


def test_bad_options_and_values_raise_naming_the_slot():
  with pytest.raises(ValueError, match="'img'.*preprocess"):
    PROC.preprocess_input(tf.constant(b""), make_ctx(attrs={"preprocess": "foo"}))
  with pytest.raises(ValueError, match="mask_ratio"):
    PROC.preprocess_input(tf.constant(b""), make_ctx(attrs={"mask_ratio": 1.5}))
  with pytest.raises(ValueError, match="image_size.*int"):
    PROC.preprocess_input(tf.constant(b""), make_ctx(options={"image_size": "big"}))
  with pytest.raises(ValueError, match="t_image.*float32"):
    PROC.preprocess_input(tf.zeros([4, 4, 3]), make_ctx())


def test_explicit_source_option_reads_bytes_as_bytes(tmp_path):
  path = tmp_path / "x.png"
  path.write_bytes(encode(rect_image(), "PNG"))
  as_bytes = make_ctx(options={"image_size": 8, "image_source": "bytes"})
  out = PROC.preprocess_input(tf.constant(str(path)), as_bytes)
  assert not bool(out.valid)  # a path is not image bytes
  as_path = make_ctx(options={"image_size": 8, "image_source": "path"})
  assert bool(PROC.preprocess_input(tf.constant(str(path)), as_path).valid)


def test_iterator_over_guarded_decoding_can_be_checkpointed(tmp_path):
  """Exact resume needs the data position: the guarded decode must serialize."""
  ctx = make_ctx(options={"image_size": 8})
  good = encode(rect_image(), "PNG")
  values = [good, b"", encode(rect_image(value=99), "JPEG"), good[:50], good]
  ds = tf.data.Dataset.from_tensor_slices(values).map(
      lambda v: PROC.preprocess_input(v, ctx).values)
  it = iter(data_stats.checkpointable(ds))
  next(it)
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.save(str(tmp_path / "it"))
  rest = [x.numpy() for x in it]
  ckpt.restore(path)
  again = [x.numpy() for x in it]
  assert len(rest) == len(again) == 4
  for a, b in zip(rest, again):
    np.testing.assert_array_equal(a, b)


def test_decoded_arrays_empty_gray_and_rgba():
  ctx = make_ctx(options={"image_size": 8})
  for empty in (np.zeros((0, 5, 3), np.uint8), np.zeros((4, 0, 3), np.uint8)):
    eager, graph = eager_and_in_tf_data(lambda v: PROC.preprocess_input(v, ctx), empty)
    assert not eager.valid and not graph.valid and eager.mask.tolist() == [0]
  rgb = rect_image(10, 12, (2, 3, 6, 9))
  want = PROC.preprocess_input(tf.constant(rgb), ctx).values.numpy()
  rgba = np.concatenate([rgb, np.full((10, 12, 1), 7, np.uint8)], axis=-1)
  np.testing.assert_array_equal(
      PROC.preprocess_input(tf.constant(rgba), ctx).values.numpy(), want)
  gray = rgb[:, :, 0]
  np.testing.assert_array_equal(
      PROC.preprocess_input(tf.constant(gray), ctx).values.numpy(), want)
  # Inside tf.data with an unknown shape the guarded path gives the same pixels.
  ds = tf.data.Dataset.from_generator(
      lambda: iter([rgb, rgb[:0]]), output_signature=tf.TensorSpec(
          [None, None, None], tf.uint8)).map(lambda v: PROC.preprocess_input(v, ctx))
  got = list(ds.as_numpy_iterator())
  np.testing.assert_array_equal(got[0].values, want)
  assert got[0].valid and not got[1].valid


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_base64_strings_as_in_ofa_tsv_files(fmt):
  import base64
  array = rect_image()
  data = encode(array, fmt)
  text = base64.b64encode(data)
  ctx = make_ctx(options={"image_size": 16})
  eager, graph = eager_and_in_tf_data(lambda v: PROC.preprocess_input(v, ctx), text)
  assert_same(eager, graph)
  assert eager.valid
  np.testing.assert_array_equal(
      eager.values, PROC.preprocess_input(tf.constant(data), ctx).values.numpy())
  explicit = make_ctx(options={"image_size": 16, "image_source": "base64"})
  wrapped = b"\n".join(text[i:i + 76] for i in range(0, len(text), 76))
  assert bool(PROC.preprocess_input(tf.constant(wrapped), explicit).valid)
  broken = text[: len(text) // 2] + b"!!"
  assert not bool(PROC.preprocess_input(tf.constant(broken), ctx).valid)
