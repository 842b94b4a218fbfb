"""IMAGE: pixels for the ResNet adapter (input side) and for VQ tokenization (target).

Input side, as OFA does it: decode, resize to image_size x image_size without
keeping the aspect ratio (bicubic, antialiased like PIL), normalize with mean 0.5 /
std 0.5. `preprocess=imagenet` uses ImageNet's mean/std and a resize of the shorter
side to image_size / crop_pct followed by a centre crop (a random crop position in
training, drawn from the slot seed, the only augmentation: it is cheap,
deterministic and exactly representable in the geometry). `mask_ratio=p` zeroes the
central square covering p of the area (OFA's image-infilling input).

The geometry (orig_h, orig_w, scale_y, scale_x, offset_y, offset_x) records the
transform, processed = orig * scale + offset, so BOX slots can be co-transformed and
predicted boxes mapped back to original pixels.

Strings may be encoded bytes, base64 text (OFA's TSV files) or a file path.
An undecodable value (corrupt or truncated bytes, an empty string, a missing file)
is never an error and never zeros: `valid=False`, and the plan drops and counts the
example. Options (slot attribute, else task option, else default):

  image_size / option image_size                       input side, default 480
  preprocess=image|imagenet                            input variant, default image
  crop_pct / option image_crop_pct                     imagenet variant, default 0.875
  mask_ratio                                           0 <= p < 1, default 0
  augment / option image_augment                       random crop in training, True
  option image_source = auto|bytes|base64|path         how to read strings, auto
                        (auto: image magic -> bytes, base64 of one -> base64, else path)
  image_size (on a target slot) / option target_image_size   target, default 256
  option vq_factor                                     the VQGAN's downsampling
                        factor (8: OFA's tokenizer); the target takes
                        (target side / vq_factor)^2 `<code_k>` tokens

A target image is trained as VQ codes: the plan writes that many placeholder
`<code_0>` tokens (kind CODE, with loss) next to the pixels, and the model's
frozen VQGAN head (`ofa_jax/model/image_code_head.py`) replaces them by the
image's codes inside the jitted step, unless an offline cache
(`tools/tokenize_images.py`) already holds the codes and no pixels.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from ofa_jax.modalities import image_ops
from ofa_jax.modalities import options
from ofa_jax.modalities import base as base_lib
from ofa_jax.modalities.base import (DenseModality, DenseSlotOutput, Placed,
                                     SlotContext)
# The names of its task features (TF-free: the model's image adapter reads them).
from ofa_jax.modalities.image_features import (IMAGE_GEOMETRY, IMAGE_MASK,
                                               IMAGE_SLOT_RANK,
                                               IMAGE_TEXT_OFFSET, IMAGES,
                                               TARGET_IMAGE, TARGET_IMAGE_MASK)
from ofa_jax.features import TokenKind
from ofa_jax.modalities.spec import (BOTH_SIDES, SOURCE_ONLY, AttrSpec,
                                    DecodingKind, RunOption, Stream)

DEFAULT_IMAGE_SIZE = 480
DEFAULT_TARGET_IMAGE_SIZE = 256
DEFAULT_CROP_PCT = 0.875
DEFAULT_VQ_FACTOR = 8  # OFA's VQGAN: 256 px -> 32 x 32 codes
_INPUT_VARIANTS = ("image", "imagenet")
_TARGET_VARIANTS = ("image", "image_vqgan")
_SOURCES = ("auto", "bytes", "base64", "path")
# Files the inference CLI reads an IMAGE slot from, when given a directory.
FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_CODES_TOP_K = 256  # OFA's text-to-image sampling


def _image_code_constraints(spec: Any, layout: Any) -> tuple:
  """Only `<code_k>` ids, exactly `max_len` of them (the code grid)."""
  from ofa_jax.decoding import constraints as dc  # pylint: disable=g-import-not-at-top
  if spec.max_len is None:
    raise ValueError("image_codes decoding needs max_len (the number of codes)")
  return (dc.image_constraint(layout, int(spec.max_len)),)


# An IMAGE target decodes as VQ codes: sampled (OFA's text-to-image), a fixed
# grid of them, with the decoder's code positions.
def _picture_view(value: Any) -> dict[str, Any]:
  """`Result.image`: the generated picture (uint8 [H, W, 3]) the codes render to."""
  arr = np.asarray(value) if value is not None else None
  is_picture = (arr is not None and arr.dtype == np.uint8 and arr.ndim == 3
                and arr.shape[-1] == 3)
  return dict(image=value if is_picture else None)


IMAGE_CODES = DecodingKind("image_codes", fixed_length=True, method="sample",
                           top_k=IMAGE_CODES_TOP_K, code_targets=True,
                           constraints=_image_code_constraints,
                           views=_picture_view)



def image_source(ctx: SlotContext) -> str:
  """How a string value is read: "auto" tells bytes, base64 and paths apart."""
  source = options.slot_option(ctx, "source", ("image_source",), "auto", str)
  if source not in _SOURCES:
    raise ValueError(f"{ctx.where()}: image_source must be one of {_SOURCES}, "
                     f"got {source!r}")
  return source


def input_image_size(ctx: SlotContext, keys: tuple[str, ...] = ("image_size",)
                     ) -> int:
  """The resize side of an input image (also the frame size of VIDEO slots)."""
  size = options.slot_option(ctx, "image_size", keys, DEFAULT_IMAGE_SIZE, int)
  return int(image_ops.positive(ctx, "image_size", size))


class ImageProcessor(DenseModality):
  """The IMAGE modality (see the module docstring for the options)."""

  name = "IMAGE"
  attributes = (
      AttrSpec("image_size", "int", BOTH_SIDES,
               doc="resize side in pixels (target: the target image side)"),
      AttrSpec("mask_ratio", "ratio", SOURCE_ONLY, doc="centre mask"),
      AttrSpec("crop_pct", "ratio", SOURCE_ONLY,
               doc="imagenet variant: resize to image_size / crop_pct, crop"),
      AttrSpec("augment", "bool", SOURCE_ONLY,
               doc="random crop position in training (imagenet variant)"),
      AttrSpec("source", "name", BOTH_SIDES,
               doc="how strings are read: auto, bytes, base64 or path"),
  )
  adapter = IMAGES  # the ResNet adapter of the model registry
  run_options = (RunOption("image_size", int,
                           "input image side the tasks were trained at"),
                 RunOption("target_image_size", int,
                           "side of the generated images (VQ targets)"),
                 RunOption("vq_factor", int,
                           "the VQGAN's downsampling factor of the targets"))
  file_suffixes = FILE_SUFFIXES
  decoding_kinds = (IMAGE_CODES,)
  head = TARGET_IMAGE  # the VQ image-code head: a later issue, not registered yet
  input_streams = (
      Stream(IMAGES, "float32", 4, IMAGES),
      Stream(IMAGE_MASK, "int32", 1, IMAGES),
      Stream(IMAGE_TEXT_OFFSET, "int32", 1, IMAGES),
      Stream(IMAGE_SLOT_RANK, "int32", 1, IMAGES),
      Stream(IMAGE_GEOMETRY, "float32", 2, IMAGES, trailing=(6,)),
  )
  target_streams = (
      Stream(TARGET_IMAGE, "float32", 3, TARGET_IMAGE, padded_axes=2),
      Stream(TARGET_IMAGE_MASK, "int32", 1, 1, empty_length=1),
  )
  max_input_slots = None
  length_options = {TARGET_IMAGE: ("target_image_size",)}
  provides_geometry = True
  shared_attrs = ("image_size", "max_image_size")

  def absent_dims(self, stream: Stream, options: Mapping[str, Any]
                  ) -> tuple[int, ...]:
    if stream.name == IMAGES:
      size = int(options.get("image_size", DEFAULT_IMAGE_SIZE))
      return (size, size, 3)
    return (3,)

  def layout_inputs(self, placed: Sequence[Placed]) -> dict[str, tf.Tensor]:
    """Every input image of the example, stacked in instruction order."""
    return {
        IMAGES: tf.stack([tf.cast(r.values, tf.float32) for r, _, _ in placed]),
        IMAGE_MASK: tf.concat([tf.reshape(tf.cast(r.mask, tf.int32), [-1])[:1]
                               for r, _, _ in placed], 0),
        IMAGE_TEXT_OFFSET: tf.stack([o for _, o, _ in placed]),
        IMAGE_SLOT_RANK: tf.constant([k for _, _, k in placed], tf.int32),
        IMAGE_GEOMETRY: tf.stack([tf.cast(r.geometry, tf.float32)
                                  for r, _, _ in placed]),
    }

  def placements(self, example: Mapping[str, Any]
                 ) -> list[tuple[int, int, str, str]]:
    if IMAGE_TEXT_OFFSET not in example:
      return []
    out = []
    for k, (off, rank, mask) in enumerate(zip(
        np.asarray(example[IMAGE_TEXT_OFFSET]).reshape(-1),
        np.asarray(example[IMAGE_SLOT_RANK]).reshape(-1),
        np.asarray(example.get(IMAGE_MASK, [])).reshape(-1))):
      if mask:
        out.append((int(off), int(rank), self.name,
                    f"IMAGE #{k} {base_lib._stats(np.asarray(example[IMAGES][k]))}"))
    return out

  def target_decoding(self, template: Any, options: Mapping[str, Any]
                      ) -> tuple[str, dict[str, Any]]:
    """Image codes: a grid of (side / vq_factor)^2 codes, sampled, no prompt."""
    n = _num_codes(_target_image_size(template, options), _vq_factor(options),
                   "target_decoding")
    return IMAGE_CODES.name, dict(beam_size=1, max_len=n, min_len=n,
                                  sampling=True, max_prompt_len=0)

  def target_placeholder_tokens(self, res: DenseSlotOutput, ctx: SlotContext
                                ) -> base_lib.TokenSlotOutput:
    """(side / vq_factor)^2 `<code_0>` ids of kind CODE: the code grid, row-major,
    filled in by the model's VQGAN head (or an offline cache)."""
    del res
    if ctx.vocab.num_codes <= 0:
      raise ValueError(f"{ctx.where()}: an IMAGE target is trained as VQ codes, "
                       "but the vocabulary has no <code_k> ids (num_codes=0); "
                       "build it with the VQGAN's codebook size")
    n = _num_codes(_target_side(ctx), _vq_factor(ctx.options), ctx.where())
    return base_lib.TokenSlotOutput(
        tokens=tf.fill([n], tf.constant(ctx.vocab.code_offset, tf.int32)),
        kinds=tf.fill([n], tf.constant(int(TokenKind.CODE), tf.int32)))

  def model_problems(self, slot: Any, options: Mapping[str, Any],
                     model_config: Any) -> list[str]:
    """The code grid of the task must be the one the model's decoder and VQGAN
    head were built for (code positions and the 2-D code bias depend on it)."""
    if slot.is_source or model_config is None:
      return []
    side = slot.get("image_size")
    side = int(side if side is not None else options.get(
        "target_image_size", DEFAULT_TARGET_IMAGE_SIZE))
    factor = _vq_factor(options)
    problems = []
    want = (int(getattr(model_config, "code_image_size", side)),
            int(getattr(model_config, "code_downsample", factor)))
    if (side, factor) != want:
      problems.append(
          f"slot {slot.to_string()}: target images of {side} px at vq_factor "
          f"{factor} ({side // factor} x {side // factor} codes), but the model "
          f"config has code_image_size={want[0]}, code_downsample={want[1]}")
    return problems

  def to_tensor(self, value: Any, where: str) -> tf.Tensor:
    return tf.constant(image_value(value, where))

  def placeholder(self, grouped: bool, labels: Optional[Sequence[str]]
                  ) -> tf.Tensor:
    del grouped, labels
    return tf.constant(image_value(np.zeros((8, 8, 3), np.uint8), "placeholder"))

  def explain_invalid(self, value: tf.Tensor, ctx: SlotContext
                      ) -> Optional[str]:
    """Decodes `value` eagerly, outside the guard, to catch its error."""
    try:
      image_ops.decode_image_uint8(tf.convert_to_tensor(value),
                                   image_source(ctx))
    except (tf.errors.OpError, ValueError) as e:
      return image_ops.error_text(e)
    return None

  def _input_settings(self, ctx: SlotContext) -> dict[str, Any]:
    variant = options.slot_option(ctx, "preprocess", (), "image", str)
    if variant not in _INPUT_VARIANTS:
      raise ValueError(f"{ctx.where()}: IMAGE input preprocess must be one of "
                       f"{_INPUT_VARIANTS}, got {variant!r}")
    mask_ratio = options.slot_option(ctx, "mask_ratio", (), 0.0, float)
    if not 0.0 <= mask_ratio < 1.0:
      raise ValueError(f"{ctx.where()}: mask_ratio must be in [0, 1), got "
                       f"{mask_ratio!r}")
    crop_pct = None
    if variant == "imagenet":
      crop_pct = options.slot_option(ctx, "crop_pct", ("image_crop_pct",),
                                       DEFAULT_CROP_PCT, float)
      if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"{ctx.where()}: crop_pct must be in (0, 1], got "
                         f"{crop_pct!r}")
    augment = options.slot_option(ctx, "augment", ("image_augment",), True, bool)
    return dict(
        size=input_image_size(ctx), variant=variant, mask_ratio=mask_ratio,
        crop_pct=crop_pct, source=image_source(ctx),
        crop_seed=(image_ops.sub_seed(ctx.seed, 1)
                   if ctx.is_training and augment and crop_pct is not None else None))

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    """Encoded bytes / path / uint8 [H,W,3] -> float32 [S,S,3] + geometry [6]."""
    cfg = self._input_settings(ctx)
    size = cfg["size"]
    if cfg["variant"] == "imagenet":
      mean, std = image_ops.IMAGENET_MEAN, image_ops.IMAGENET_STD
    else:
      mean, std = image_ops.OFA_MEAN, image_ops.OFA_STD

    def process(v):
      image = image_ops.decode_image_uint8(v, cfg["source"])
      pixels, geometry = image_ops.resize_geometry(
          image, size, crop_pct=cfg["crop_pct"], crop_seed=cfg["crop_seed"],
          method="bicubic")
      return image_ops.normalize(pixels, mean, std), geometry

    value = _as_tensor(value, ctx)
    fallback = (tf.zeros([size, size, 3], tf.float32), tf.zeros([6], tf.float32))
    (pixels, geometry), valid = image_ops.run_checked(process, value, fallback)
    if cfg["mask_ratio"] > 0:
      pixels = image_ops.mask_centre(pixels, cfg["mask_ratio"])
    return DenseSlotOutput(values=pixels, mask=tf.reshape(tf.cast(valid, tf.int32), [1]),
                           valid=valid, geometry=geometry)

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    """Pixels for VQ tokenization: float32 [St,St,3] in [-1, 1], mask int32 [1]."""
    variant = options.slot_option(ctx, "preprocess", (), "image_vqgan", str)
    if variant not in _TARGET_VARIANTS:
      raise ValueError(f"{ctx.where()}: IMAGE target preprocess must be one of "
                       f"{_TARGET_VARIANTS}, got {variant!r}")
    size = _target_side(ctx)
    source = image_source(ctx)

    def process(v):
      image = image_ops.decode_image_uint8(v, source)
      pixels, geometry = image_ops.resize_geometry(
          image, size, crop_pct=None, crop_seed=None, method="lanczos3")
      return pixels / 127.5 - 1.0, geometry

    value = _as_tensor(value, ctx)
    fallback = (tf.zeros([size, size, 3], tf.float32), tf.zeros([6], tf.float32))
    (pixels, geometry), valid = image_ops.run_checked(process, value, fallback)
    return DenseSlotOutput(values=pixels, mask=tf.reshape(tf.cast(valid, tf.int32), [1]),
                           valid=valid, geometry=geometry)

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> np.ndarray:
    """Pixels in [-1, 1] (e.g. a VQ decoder's output) -> uint8 [H, W, 3]."""
    del ctx
    pixels = np.asarray(tokens, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
      raise ValueError(f"IMAGE postprocess expects pixels [H, W, 3] in [-1, 1], got "
                       f"shape {pixels.shape}")
    return np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _as_tensor(value: Any, ctx: SlotContext) -> tf.Tensor:
  try:
    value = tf.convert_to_tensor(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{ctx.where()}: an IMAGE value must be bytes, a path or a "
                     f"uint8 [H, W, 3] array: {e}") from None
  if value.dtype not in (tf.string, tf.uint8):
    raise ValueError(f"{ctx.where()}: an IMAGE value must be a string (encoded "
                     f"bytes or a path) or uint8 [H, W, 3], got {value.dtype.name}")
  return value


def _target_side(ctx: SlotContext) -> int:
  """On a target slot the instruction's `image_size` attribute is the target size."""
  size = options.slot_option(ctx, "image_size", ("target_image_size",),
                             DEFAULT_TARGET_IMAGE_SIZE, int)
  return int(image_ops.positive(ctx, "target_image_size", size))


def _vq_factor(task_options: Mapping[str, Any]) -> int:
  factor = int(task_options.get("vq_factor", DEFAULT_VQ_FACTOR))
  if factor < 1:
    raise ValueError(f"option vq_factor must be >= 1, got {factor}")
  return factor


def _num_codes(side: int, factor: int, where: str) -> int:
  """Codes of a side x side target at the VQGAN's downsampling factor."""
  if side % factor:
    raise ValueError(f"{where}: target image side {side} is not a multiple of "
                     f"the VQGAN's downsampling factor vq_factor={factor}")
  return (side // factor) ** 2


def _target_image_size(template: Any, options: Mapping[str, Any]) -> int:
  """Side of the target image: the target IMAGE slot's `image_size` attribute,
  else the task option `target_image_size`, else 256 (preprocess_target's rule)."""
  for alt in template.alternatives:
    for slot in alt.target_slots():
      if slot.modality == IMAGE.name and slot.get("image_size") is not None:
        return int(slot.get("image_size"))
  return int(options.get("target_image_size", DEFAULT_TARGET_IMAGE_SIZE))


def image_value(value: Any, where: str) -> Any:
  """Paths and bytes pass; arrays and PIL images become PNG bytes (one dtype)."""
  if isinstance(value, (str, os.PathLike)):
    path = os.fspath(value)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{where}: image file {path!r} does not exist")
    return path
  if isinstance(value, (bytes, bytearray)):
    return bytes(value)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(value, Image.Image):
    image = value.convert("RGB")
  else:
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
      raise ValueError(f"{where}: an image must be a path, encoded bytes, a PIL "
                       f"image or uint8 [H, W, 3]; got {arr.dtype} {arr.shape}")
    image = Image.fromarray(arr[..., :3] if arr.shape[-1] != 1 else arr[..., 0])
    image = image.convert("RGB")
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


IMAGE = ImageProcessor()
