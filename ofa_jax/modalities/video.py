"""VIDEO (input only): n_frames frames sampled uniformly, resized like images.

Sampling splits the clip into n_frames equal segments and takes one frame from
each: the middle of the segment at evaluation (deterministic), a random position
inside it in training (drawn from the slot seed, so it is reproducible). A clip with
fewer frames than n_frames keeps all its frames and pads the rest with mask 0: no
frame is invented. Only the sampled frames are decoded.

Values: uint8 [T, H, W, 3] frames, or a string vector [T] of encoded frames
(JPEG/PNG/...; paths are read like images). An empty clip or an undecodable sampled
frame gives valid=False (the plan drops and counts the example).

Options (slot attribute, else task option, else default):
  n_frames / video_n_frames               8
  image_size / video_image_size, image_size   480 (frames are resized to S x S, no
                                          aspect kept, mean 0.5 / std 0.5, as images)
  option image_source = auto|bytes|path   how encoded frames are read
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from ofa_jax.modalities import image as image_lib
from ofa_jax.modalities import image_ops
from ofa_jax.modalities import options
from ofa_jax.modalities.base import (DenseModality, DenseSlotOutput, SlotContext,
                                     single_slot_streams)
from ofa_jax.modalities.spec import SOURCE_ONLY, AttrSpec, Stream

DEFAULT_N_FRAMES = 8
VIDEO_STREAM = "video"  # float32 [F, S, S, 3] frames (+ mask, offset, rank)


def sample_frame_indices(num_frames: tf.Tensor, n_frames: int,
                         seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
  """(indices int32 [n_frames], mask int32 [n_frames]) for a clip of num_frames.

  num_frames >= n_frames: one index per equal segment (segment middle, or a
  uniform position inside the segment when `seed` is given). Fewer frames: indices
  0..num_frames-1 then padding (index clipped, mask 0). Indices are always in
  range when num_frames > 0.
  """
  num_frames = tf.cast(num_frames, tf.int32)
  total = tf.cast(num_frames, tf.float32)
  segment = total / n_frames
  start = tf.range(n_frames, dtype=tf.float32) * segment
  if seed is None:
    offset = tf.fill([n_frames], 0.5)
  else:
    offset = tf.random.stateless_uniform([n_frames], seed=seed)
  spread = tf.cast(tf.floor(start + offset * segment), tf.int32)
  spread = tf.clip_by_value(spread, 0, tf.maximum(num_frames - 1, 0))
  positions = tf.range(n_frames, dtype=tf.int32)
  enough = num_frames >= n_frames
  indices = tf.where(enough, spread,
                     tf.minimum(positions, tf.maximum(num_frames - 1, 0)))
  mask = tf.cast(tf.logical_or(enough, positions < num_frames), tf.int32)
  return indices, mask


class VideoProcessor(DenseModality):
  """The VIDEO modality (see the module docstring for the options).

  Input only, and data side only for now (no encoder adapter `video` is
  registered in the model registry).
  """

  name = "VIDEO"
  attributes = (
      AttrSpec("n_frames", "int", SOURCE_ONLY,
               doc="frames sampled uniformly from the clip"),
      AttrSpec("image_size", "int", SOURCE_ONLY, doc="frame side in pixels"),
      AttrSpec("source", "name", SOURCE_ONLY,
               doc="how encoded frames are read: auto, bytes or path"),
  )
  adapter = VIDEO_STREAM
  input_streams = single_slot_streams(VIDEO_STREAM, 4)
  input_only = True
  length_options = {VIDEO_STREAM: ("video_n_frames",)}

  def absent_dims(self, stream: Stream, options: Mapping[str, Any]
                  ) -> tuple[int, ...]:
    del stream
    size = int(options.get("video_image_size", options.get(
        "image_size", image_lib.DEFAULT_IMAGE_SIZE)))
    return (size, size, 3)

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    """Frames -> float32 [F, S, S, 3] and mask int32 [F] (1 = a real frame)."""
    n_frames = options.slot_option(ctx, "n_frames", ("video_n_frames",),
                                     DEFAULT_N_FRAMES, int)
    n_frames = int(image_ops.positive(ctx, "n_frames", n_frames))
    size = image_lib.input_image_size(ctx, ("video_image_size", "image_size"))
    source = image_lib.image_source(ctx)
    seed = image_ops.sub_seed(ctx.seed, 2) if ctx.is_training else None

    value = tf.convert_to_tensor(value)
    if value.dtype == tf.string:
      if value.shape.rank != 1:
        raise ValueError(f"{ctx.where()}: encoded VIDEO frames must be a string "
                         f"vector [T], got shape {value.shape} (video files are not "
                         f"decoded here: extract the frames first)")
    elif value.dtype == tf.uint8:
      if value.shape.rank != 4:
        raise ValueError(f"{ctx.where()}: VIDEO frames must be uint8 [T, H, W, 3], "
                         f"got shape {value.shape}")
    else:
      raise ValueError(f"{ctx.where()}: a VIDEO value must be uint8 [T, H, W, 3] or "
                       f"a string vector of encoded frames, got {value.dtype.name}")

    length = tf.shape(value)[0]
    indices, mask = sample_frame_indices(length, n_frames, seed)
    fallback = tf.zeros([n_frames, size, size, 3], tf.float32)

    def resize_frames(frames):  # uint8 [F, H, W, 3]
      frames = tf.ensure_shape(frames, [n_frames, None, None, 3])
      shape = tf.shape(frames)
      with tf.control_dependencies([image_ops.assert_that(
          tf.logical_and(shape[1] > 0, shape[2] > 0), "empty video frames")]):
        pixels = tf.image.resize(tf.cast(frames, tf.float32), [size, size],
                                 method="bicubic", antialias=True)
      pixels = tf.clip_by_value(pixels, 0.0, 255.0)
      return image_ops.normalize(pixels, image_ops.OFA_MEAN, image_ops.OFA_STD)

    def decode_frames(encoded):  # string [F]
      def one(v):
        image = image_ops.decode_image_uint8(v, source)
        pixels, _ = image_ops.resize_geometry(image, size, crop_pct=None,
                                              crop_seed=None, method="bicubic")
        return pixels
      pixels = tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec(
          [size, size, 3], tf.float32))
      return image_ops.normalize(pixels, image_ops.OFA_MEAN, image_ops.OFA_STD)

    convert = decode_frames if value.dtype == tf.string else resize_frames

    def run(frames):
      # For encoded frames the gather is inside the guard: with an empty clip it
      # fails, which the guard turns into valid=False.
      return convert(tf.gather(frames, indices))

    nonempty = length > 0
    if value.dtype == tf.string:
      pixels, valid = image_ops.guarded(run, value, fallback)
    else:
      # Decoded frames cannot fail to decode; only an empty clip or empty frames
      # are bad, which a plain cond catches without the nested dataset.
      shape = tf.shape(value)
      ok = tf.logical_and(nonempty, tf.logical_and(shape[1] > 0, shape[2] > 0))
      pixels = tf.cond(ok, lambda: run(value), lambda: fallback)
      valid = ok
    valid = tf.logical_and(valid, nonempty)
    mask = mask * tf.cast(valid, tf.int32)
    pixels = pixels * tf.cast(mask, tf.float32)[:, None, None, None]
    return DenseSlotOutput(values=pixels, mask=mask, valid=valid)

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    raise ValueError(f"{ctx.where()}: VIDEO can only be an input (encoder) slot; "
                     f"video generation is not supported")

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> Any:
    raise ValueError("VIDEO is an input-only modality (the plan refuses VIDEO "
                     "targets at registration): there is nothing to postprocess")


VIDEO = VideoProcessor()
