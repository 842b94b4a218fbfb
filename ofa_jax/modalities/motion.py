"""MOTION: frames of joint features, normalized and clipped to a length range.

Values are float [T, D] (D from the data, e.g. OFASys's motion_6d: 3 hip position +
3 hip velocity + 6 per joint rotation). Steps, identical for the input and the
target side:

  1. temporal subsampling by `sample_rate` (every k-th frame; a random phase in
     training, phase 0 at evaluation);
  2. a clip shorter than `min_length` is valid=False: dropped and counted, like
     OFASys's PreprocessSkipException, never padded into a fake clip;
  3. a clip longer than `max_length` is cropped: centre crop at evaluation, a
     random crop in training (drawn from the slot seed, reproducible); in
     training `soft_trim=p` and `window` also shorten the clip at random first
     (see `choose_span`);
  4. normalized with the given per-dimension mean / std (the diffusion head then
     works in unit-variance space; `postprocess` undoes it);
  5. padded to `length` frames (default max_length) with a frame mask.

Normalization is explicit: pass `motion_stats={"mean": [D], "std": [D]}` (for
instance from `compute_motion_stats` over the training clips), or
`motion_normalize=False` to keep raw features; having neither is an error, because
silently training on unnormalized features is a classic bug.

Options (slot attribute, else task option, else default):
  min_length / motion_min_length     10 (OFASys's default)
  max_length / motion_max_length     1000 (OFASys's default)
  length / motion_length             padded length, default max_length
  sample_rate / motion_sample_rate   1
  soft_trim=p, window                training-time random spans (attributes only)
  (anchor_frame is rejected: it canonicalises BVH rotations, which precomputed
  features no longer have)
  option motion_stats, motion_normalize, motion_dim (D when the data's static
  shape does not say it)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import numpy as np
import tensorflow as tf

from ofa_jax.modalities import image_ops
from ofa_jax.modalities import options
from ofa_jax.modalities.base import (DenseModality, DenseSlotOutput, SlotContext,
                                     single_slot_streams, dense_target_streams)
from ofa_jax.modalities.spec import BOTH_SIDES, AttrSpec, Stream

DEFAULT_MIN_LENGTH = 10
DEFAULT_MAX_LENGTH = 1000
STD_FLOOR = 1e-6
MOTION_STREAM = "motion"         # float32 [Tm, Dm] joint features (+ companions)
TARGET_MOTION = "target_motion"  # float32 [Ttm, Dm]


def compute_motion_stats(clips: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
  """Per-dimension mean and std over all frames of `clips` (each [T, D]).

  Computed in float64 with running sums so that a dataset need not fit in memory.
  """
  count, total, total_sq, dim = 0, None, None, None
  for i, clip in enumerate(clips):
    clip = np.asarray(clip, np.float64)
    if clip.ndim != 2:
      raise ValueError(f"motion clip {i} must be [T, D], got shape {clip.shape}")
    if dim is None:
      dim, total, total_sq = clip.shape[1], np.zeros(clip.shape[1]), np.zeros(
          clip.shape[1])
    elif clip.shape[1] != dim:
      raise ValueError(f"motion clip {i} has D={clip.shape[1]}, expected {dim}")
    count += clip.shape[0]
    total += clip.sum(0)
    total_sq += np.square(clip).sum(0)
  if not count:
    raise ValueError("compute_motion_stats needs at least one non-empty clip")
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def choose_span(total: tf.Tensor, min_length: int, max_length: int,
                seed: Optional[tf.Tensor], soft_trim: Optional[float] = None,
                window: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
  """(start, size) of the frames a clip of `total` frames keeps, size <= max_length.

  Without a seed (evaluation): the centre max_length frames. With a seed
  (training): `soft_trim=p` first cuts Poisson(total * p / 2) frames from each end
  (OFASys's centre span; when that leaves fewer than min_length frames the cut is
  not made, instead of OFASys's resampling loop); `window` then draws the span size
  uniformly in [min_length, max_length]; the span is placed uniformly at random.
  """
  total = tf.cast(total, tf.int32)
  lo, hi = tf.constant(0, tf.int32), total
  if seed is not None and soft_trim:
    lam = tf.cast(total, tf.float32) * (soft_trim * 0.5)
    cut = tf.random.stateless_poisson([2], seed=image_ops.sub_seed(seed, 2),
                                      lam=lam, dtype=tf.int32)
    ok = (total - cut[1]) - cut[0] >= min_length
    lo = tf.where(ok, cut[0], 0)
    hi = tf.where(ok, total - cut[1], total)
  avail = hi - lo
  if seed is not None and window:
    size = tf.random.stateless_uniform([], seed=image_ops.sub_seed(seed, 3),
                                       minval=min_length, maxval=max_length + 1,
                                       dtype=tf.int32)
    size = tf.minimum(size, avail)
  else:
    size = tf.minimum(avail, max_length)
  room = tf.maximum(avail - size, 0)
  if seed is None:
    return lo + room // 2, size
  draw = tf.random.stateless_uniform([], seed=image_ops.sub_seed(seed, 1),
                                     maxval=tf.int32.max, dtype=tf.int32)
  return lo + draw % (room + 1), size


def _stats(ctx: SlotContext) -> tuple[np.ndarray, np.ndarray] | None:
  normalize = options.slot_option(ctx, None, ("motion_normalize",), True, bool)
  stats = options.slot_option(ctx, None, ("motion_stats",), None)
  if not normalize:
    return None
  if stats is None:
    raise ValueError(
        f"{ctx.where()}: MOTION needs normalization statistics: pass the task "
        f"option motion_stats={{'mean': [D], 'std': [D]}} (e.g. from "
        f"ofa_jax.modalities.motion.compute_motion_stats) or motion_normalize=False")
  try:
    mean = np.asarray(stats["mean"], np.float32)
    std = np.asarray(stats["std"], np.float32)
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{ctx.where()}: motion_stats must be a mapping with 'mean' "
                     f"and 'std' vectors: {e!r}") from None
  if mean.ndim != 1 or mean.shape != std.shape:
    raise ValueError(f"{ctx.where()}: motion_stats mean and std must be vectors of "
                     f"the same length, got {mean.shape} and {std.shape}")
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
    raise ValueError(f"{ctx.where()}: motion_stats contain non-finite values")
  return mean, np.maximum(std, STD_FLOOR)


def motion_dim(options_: Mapping[str, Any]) -> int:
  """D of motion frames: `motion_dim`, else the length of `motion_stats` mean.

  The processor accepts either; an absent stream must have the same D as the
  present ones of the task, or the two cannot batch together.
  """
  if options_.get("motion_dim") is not None:
    return int(options_["motion_dim"])
  stats = options_.get("motion_stats")
  if isinstance(stats, Mapping) and stats.get("mean") is not None:
    return len(stats["mean"])
  return 0


class MotionProcessor(DenseModality):
  """The MOTION modality (see the module docstring for the options).

  Data side only for now: no encoder adapter `motion` nor head `target_motion`
  is registered in the model registry.
  """

  name = "MOTION"
  attributes = (
      AttrSpec("min_length", "int", BOTH_SIDES,
               doc="shortest motion clip (shorter clips are skipped)"),
      AttrSpec("max_length", "int", BOTH_SIDES, doc="longest motion clip"),
      AttrSpec("length", "int", BOTH_SIDES, doc="padded length"),
      AttrSpec("sample_rate", "int", BOTH_SIDES, doc="keep every k-th frame"),
      AttrSpec("soft_trim", "ratio", BOTH_SIDES,
               doc="fraction of the clip that may be trimmed from its ends"),
      AttrSpec("window", "flag", BOTH_SIDES,
               doc="train on a random span of the clip"),
      AttrSpec("anchor_frame", "int", BOTH_SIDES, min_int=0,
               doc="refused with an explanation (BVH canonicalisation)"),
  )
  adapter = MOTION_STREAM
  head = TARGET_MOTION
  input_streams = single_slot_streams(MOTION_STREAM, 2)
  target_streams = dense_target_streams(TARGET_MOTION, 2)
  length_options = {MOTION_STREAM: ("motion_length", "motion_max_length"),
                    TARGET_MOTION: ("motion_length", "motion_max_length")}

  def absent_dims(self, stream: Stream, options_: Mapping[str, Any]
                  ) -> tuple[int, ...]:
    del stream
    return (motion_dim(options_),)

  def effective_options(self, options_: dict[str, Any]) -> dict[str, Any]:
    """A max length set from the sequence lengths keeps min_length <= it."""
    if "motion_max_length" in options_:
      options_.setdefault("motion_min_length",
                          min(DEFAULT_MIN_LENGTH, options_["motion_max_length"]))
    return options_

  def _process(self, value: tf.Tensor, ctx: SlotContext, seed_slot: int
               ) -> DenseSlotOutput:
    opt = lambda name, default: options.slot_option(  # noqa: E731
        ctx, name, (f"motion_{name}",), default, int)
    min_length = int(image_ops.positive(ctx, "min_length",
                                        opt("min_length", DEFAULT_MIN_LENGTH)))
    max_length = int(image_ops.positive(ctx, "max_length",
                                        opt("max_length", DEFAULT_MAX_LENGTH)))
    length = int(image_ops.positive(ctx, "length", opt("length", max_length)))
    stride = int(image_ops.positive(ctx, "sample_rate", opt("sample_rate", 1)))
    if min_length > max_length or max_length > length:
      raise ValueError(f"{ctx.where()}: MOTION needs min_length <= max_length <= "
                       f"length, got {min_length}, {max_length}, {length}")
    stats = _stats(ctx)
    if ctx.attrs and ctx.attrs.get("anchor_frame") is not None:
      raise ValueError(
          f"{ctx.where()}: anchor_frame canonicalises BVH rotations; ofa_jax's "
          f"MOTION takes precomputed joint features, so canonicalise them when "
          f"the features are made")
    soft_trim = options.slot_option(ctx, "soft_trim", (), None, float)
    if soft_trim is not None and not 0.0 < soft_trim < 1.0:
      raise ValueError(f"{ctx.where()}: soft_trim must be in (0, 1), got "
                       f"{soft_trim!r}")

    value = tf.convert_to_tensor(value)
    if not (value.dtype.is_floating or value.dtype.is_integer):
      raise ValueError(f"{ctx.where()}: MOTION frames must be float [T, D], got "
                       f"{value.dtype.name}")
    if value.shape.rank != 2:
      raise ValueError(f"{ctx.where()}: MOTION frames must be [T, D], got shape "
                       f"{value.shape}")
    dim = value.shape[1]
    dim_option = options.slot_option(ctx, None, ("motion_dim",), None, int)
    for name, d in (("motion_dim", dim_option),
                    ("motion_stats", None if stats is None else stats[0].shape[0])):
      if d is not None and dim is not None and d != dim:
        raise ValueError(f"{ctx.where()}: MOTION frames have D={dim} but {name} "
                         f"says {d}")
      dim = dim if dim is not None else d
    if dim is None:
      raise ValueError(f"{ctx.where()}: the MOTION feature size D is unknown: set "
                       f"the task option motion_dim or motion_stats")
    frames = tf.ensure_shape(tf.cast(value, tf.float32), [None, dim])

    train_seed = (image_ops.sub_seed(ctx.seed, seed_slot)
                  if ctx.is_training and ctx.seed is not None else None)
    if stride > 1:
      if train_seed is None:
        phase = tf.constant(0, tf.int32)
      else:
        phase = tf.random.stateless_uniform(
            [], seed=image_ops.sub_seed(train_seed, 0), maxval=stride, dtype=tf.int32)
      frames = frames[tf.minimum(phase, tf.maximum(tf.shape(frames)[0] - 1, 0))::stride]

    total = tf.shape(frames)[0]
    valid = tf.logical_and(total >= min_length,
                           tf.reduce_all(tf.math.is_finite(frames)))
    start, keep = choose_span(
        total, min_length, max_length, train_seed,
        soft_trim=soft_trim,
        window=options.slot_option(ctx, "window", (), False, bool))
    clip = frames[start:start + keep]
    if stats is not None:
      clip = (clip - tf.constant(stats[0])) / tf.constant(stats[1])
    clip = tf.where(valid, clip, tf.zeros_like(clip))
    clip = tf.ensure_shape(tf.pad(clip, [[0, length - keep], [0, 0]]), [length, dim])
    mask = tf.cast(tf.logical_and(tf.range(length) < keep, valid), tf.int32)
    return DenseSlotOutput(values=clip, mask=mask, valid=valid)

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    """float [T, D] -> float32 [length, D], mask int32 [length]."""
    return self._process(value, ctx, seed_slot=3)

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    """The same frames as the diffusion head's regression target."""
    return self._process(value, ctx, seed_slot=4)

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> np.ndarray:
    """Generated normalized frames [T, D] -> raw features of the real frames.

    ctx may hold "mask" ([T], 1 = real frame) and "motion_stats" (as the task
    option) to undo the normalization.
    """
    frames = np.asarray(tokens, np.float32)
    if frames.ndim != 2:
      raise ValueError(f"MOTION postprocess expects frames [T, D], got shape "
                       f"{frames.shape}")
    ctx = ctx or {}
    if ctx.get("mask") is not None:
      frames = frames[np.asarray(ctx["mask"]).astype(bool)]
    stats = ctx.get("motion_stats")
    if stats is not None:
      std = np.maximum(np.asarray(stats["std"], np.float32), STD_FLOOR)
      frames = frames * std + np.asarray(stats["mean"], np.float32)
    return frames


MOTION = MotionProcessor()
