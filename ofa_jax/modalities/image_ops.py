"""Graph-mode TF helpers shared by the dense modalities (image, video, audio, motion).

Three concerns live here because several modality files need them:

* Checking options and deriving seeds (reading them is `options.slot_option`,
  shared with the token modalities).
* A guarded path for decoding. In graph mode a corrupt JPEG makes
  `tf.io.decode_image` raise, and inside tf.data a raised op error ends the whole
  dataset. `guarded()` runs a function inside a one-element dataset with
  `ignore_errors()`, so any op error (bad bytes, truncated file, missing path,
  failed assertion) becomes `ok=False` with a fallback value of the same
  structure, eagerly and inside tf.data alike. tf.data counts that nested dataset
  as external state: a pipeline using it needs `data_stats.checkpointable(ds)`
  (which `data_stats.filter_invalid` applies) for its iterator to be saved.
* Decoding and resizing images with the geometry that lets boxes be co-transformed:
  processed = orig * scale + offset, in continuous pixel coordinates (a pixel's
  centre at index i is at i + 0.5).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Optional

import tensorflow as tf

from ofa_jax.modalities.base import SlotContext

# Mean / std of OFA's default image preprocessing, and ImageNet's (timm defaults).
OFA_MEAN = (0.5, 0.5, 0.5)
OFA_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Magic bytes of the formats tf.io.decode_image understands.
_MAGICS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# JPEG/PNG/GIF first bytes in standard base64 (BMP's "Qk" is too short to tell
# from a relative path).
_B64_MAGICS = (b"/9j/", b"iVBORw0KGgo", b"R0lGODdh", b"R0lGODlh")


# ---------------------------------------------------------------------------
# Option checks (reading options is `options.slot_option`)
# ---------------------------------------------------------------------------
def positive(ctx: SlotContext, name: str, value: float | int, *,
             allow_zero: bool = False) -> float | int:
  """Checks that an option is > 0 (or >= 0), naming it in the error."""
  if value < 0 or (value == 0 and not allow_zero):
    raise ValueError(f"{ctx.where()}: {name} must be "
                     f"{'>= 0' if allow_zero else '> 0'}, got {value!r}")
  return value


def sub_seed(seed: Optional[tf.Tensor], k: int) -> Optional[tf.Tensor]:
  """An independent stateless seed derived from the slot seed (None stays None)."""
  if seed is None:
    return None
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
  return tf.random.experimental.stateless_fold_in(seed, k)


# ---------------------------------------------------------------------------
# The guarded path
# ---------------------------------------------------------------------------
def guarded(fn: Callable[[Any], Any], value: Any, fallback: Any,
            shapes: Any = None) -> tuple[Any, tf.Tensor]:
  """Runs `fn(value)`; returns (its result, True), or (fallback, False) on any error.

  `fn`'s result must have the structure and dtypes of `fallback` (what an invalid
  example carries; its mask says it is absent) and the static shapes `shapes`
  (a structure of tf.TensorShape; default: the fallback's shapes; give e.g.
  tf.TensorShape([None]) for a variable length).

  How: a one-element dataset maps `fn` and drops the element on any error
  (`ignore_errors`); the fallback is concatenated after it and the first element
  is taken. `get_single_element` is cheap (no tf.data optimizer pass or autotuning
  per call, unlike `reduce`, which cost ~100x more per example).
  """
  fallback = tf.nest.map_structure(tf.convert_to_tensor, fallback)
  if shapes is None:
    shapes = tf.nest.map_structure(lambda f: f.shape, fallback)

  def attempt(v):
    # Shape / dtype checks happen inside the guarded map too, so a result of an
    # unexpected shape is invalid rather than an error later.
    result = tf.nest.map_structure(
        lambda e, f, s: tf.ensure_shape(tf.cast(e, f.dtype), s), fn(v), fallback,
        shapes)
    return result, tf.constant(True)

  tried = tf.data.Dataset.from_tensors(value).map(attempt).ignore_errors()
  otherwise = tf.data.Dataset.from_tensors((fallback, tf.constant(False)))
  result, ok = tried.concatenate(otherwise).take(1).get_single_element()
  return result, ok


def run_checked(fn: Callable[[Any], Any], value: tf.Tensor, fallback: Any
                ) -> tuple[Any, tf.Tensor]:
  """`guarded(fn, value, fallback)`, with a cheaper path for decoded pixels.

  A uint8 array with a known channel count cannot fail to decode; the only bad
  case is an empty one, which a plain `tf.cond` catches without the nested
  dataset of `guarded`.
  """
  if value.dtype == tf.uint8 and value.shape.rank in (2, 3) and (
      value.shape.rank == 2 or value.shape[-1] is not None):
    shape = tf.shape(value)
    nonempty = tf.logical_and(shape[0] > 0, shape[1] > 0)
    fallback = tf.nest.map_structure(tf.convert_to_tensor, fallback)
    result = tf.cond(nonempty, lambda: fn(value), lambda: fallback)
    return result, nonempty
  return guarded(fn, value, fallback)


def error_text(error: Exception) -> str:
  """A TF error's message without TF's framing: the text of a failed
  `assert_that` ("not a JPEG/PNG/GIF/BMP image"), else the failing op's
  message without its op and node names ("Invalid PNG data, size 43")."""
  text = (getattr(error, "message", None) or str(error)).strip()
  if not text:
    return type(error).__name__
  # Eager asserts: "... Summarized data: b'msg'"; graph ones: "assertion failed: [msg]".
  match = (re.search(r"Summarized data: b'(.*?)'", text)
           or re.search(r"assertion failed: \[(.*?)\]", text))
  if match:
    return match.group(1)
  text = text.splitlines()[0]
  text = re.sub(r"\s*\[Op:\w+\].*$", "", text)
  return re.sub(r"^\{\{[^}]*\}\}\s*", "", text).strip()


def assert_that(condition: tf.Tensor, message: str) -> tf.Operation:
  """A graph assertion; inside `guarded` a failure just marks the value invalid."""
  return tf.debugging.Assert(condition, [tf.constant(message)])


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------
def has_image_magic(data: tf.Tensor) -> tf.Tensor:
  """True when the string starts with the magic bytes of JPEG/PNG/GIF/BMP."""
  data = tf.convert_to_tensor(data, tf.string)
  checks = [tf.equal(tf.strings.substr(data, 0, len(m)), m) for m in _MAGICS]
  return tf.reduce_any(tf.stack(checks))


def has_base64_image_prefix(data: tf.Tensor) -> tf.Tensor:
  """True when the string starts like standard base64 of a JPEG/PNG/GIF/BMP."""
  data = tf.convert_to_tensor(data, tf.string)
  checks = [tf.equal(tf.strings.substr(data, 0, len(m)), m) for m in _B64_MAGICS]
  return tf.reduce_any(tf.stack(checks))


def decode_base64(data: tf.Tensor) -> tf.Tensor:
  """Standard (OFA TSV) base64 -> bytes; TF only knows the web-safe alphabet."""
  data = tf.strings.regex_replace(data, r"\s", "")
  data = tf.strings.regex_replace(data, r"\+", "-")
  data = tf.strings.regex_replace(data, "/", "_")
  return tf.io.decode_base64(data)


def read_image_bytes(value: tf.Tensor, source: str) -> tf.Tensor:
  """Encoded image bytes from `value`: bytes, base64 text, or a file's content.

  source: "bytes", "base64", "path", or "auto": bytes when the value starts with
  an image magic number, base64 when it starts like the base64 of one (OFA's TSV
  files carry images so), else a path. Call inside `guarded`: a missing file or
  bad base64 raises.
  """
  if source == "bytes":
    return value
  if source == "path":
    return tf.io.read_file(value)
  if source == "base64":
    return decode_base64(value)
  return tf.case([(has_image_magic(value), lambda: value),
                  (has_base64_image_prefix(value), lambda: decode_base64(value))],
                 default=lambda: tf.io.read_file(value), exclusive=False)


def decode_image_uint8(value: tf.Tensor, source: str = "auto") -> tf.Tensor:
  """uint8 [H, W, 3] from encoded bytes / a path / an already decoded image.

  Raises on anything it cannot decode, so call it inside `guarded`.
  """
  if value.dtype == tf.string:
    if value.shape.rank not in (None, 0):
      raise ValueError(f"an encoded image or path must be a scalar string, got "
                       f"shape {value.shape}")
    data = read_image_bytes(value, source)
    with tf.control_dependencies([assert_that(
        has_image_magic(data), "not a JPEG/PNG/GIF/BMP image")]):
      image = tf.io.decode_image(data, channels=3, expand_animations=False)
  elif value.dtype == tf.uint8:
    image = value
    if image.shape.rank == 2:
      image = image[:, :, None]
    if image.shape.rank != 3 or image.shape[-1] not in (None, 1, 3, 4):
      raise ValueError(f"a decoded image must be uint8 [H, W, 3] (or 1 or 4 "
                       f"channels), got shape {value.shape}")
    if image.shape[-1] == 1:
      image = tf.tile(image, [1, 1, 3])
    elif image.shape[-1] == 4:
      image = image[:, :, :3]  # drop alpha, as decode_image(channels=3) does
    elif image.shape[-1] is None:
      image = tf.cond(tf.equal(tf.shape(image)[-1], 1),
                      lambda: tf.tile(image, [1, 1, 3]), lambda: image[:, :, :3])
  else:
    raise ValueError(f"an image value must be a string (bytes or path) or uint8 "
                     f"[H, W, 3], got {value.dtype.name} of shape {value.shape}")
  image = tf.ensure_shape(image, [None, None, 3])
  shape = tf.shape(image)
  with tf.control_dependencies([assert_that(
      tf.logical_and(shape[0] > 0, shape[1] > 0), "empty image")]):
    return tf.identity(image)


def resize_geometry(image: tf.Tensor, size: int, *, crop_pct: Optional[float],
                    crop_seed: Optional[tf.Tensor], method: str
                    ) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes uint8/float [H, W, C] to float32 [size, size, C] in [0, 255].

  crop_pct None: resize without keeping the aspect ratio (OFA). Otherwise resize
  the shorter side to size / crop_pct (aspect kept) and crop size x size: at the
  centre, or at a random place drawn from `crop_seed` when it is given.
  Returns (pixels, geometry float32 [6] = orig_h, orig_w, sy, sx, oy, ox).
  """
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  pixels = tf.cast(image, tf.float32)
  if crop_pct is None:
    resized = tf.image.resize(pixels, [size, size], method=method, antialias=True)
    sy, sx = size / h, size / w
    oy = ox = tf.constant(0.0)
  else:
    short = tf.minimum(h, w)
    target_short = tf.constant(float(math.floor(size / crop_pct)))
    new_h = tf.maximum(tf.round(h * target_short / short), float(size))
    new_w = tf.maximum(tf.round(w * target_short / short), float(size))
    resized = tf.image.resize(pixels, tf.cast(tf.stack([new_h, new_w]), tf.int32),
                              method=method, antialias=True)
    room_y, room_x = new_h - size, new_w - size
    if crop_seed is None:
      top, left = tf.floor(room_y / 2), tf.floor(room_x / 2)
    else:
      u = tf.random.stateless_uniform([2], seed=crop_seed)
      top = tf.floor(u[0] * (room_y + 1))
      left = tf.floor(u[1] * (room_x + 1))
    resized = tf.image.crop_to_bounding_box(
        resized, tf.cast(top, tf.int32), tf.cast(left, tf.int32), size, size)
    sy, sx = new_h / h, new_w / w
    oy, ox = -top, -left
  resized = tf.clip_by_value(resized, 0.0, 255.0)
  resized = tf.ensure_shape(resized, [size, size, image.shape[-1]])
  geometry = tf.cast(tf.stack([h, w, sy, sx, oy, ox]), tf.float32)
  return resized, geometry


def normalize(pixels: tf.Tensor, mean: Iterable[float], std: Iterable[float]
              ) -> tf.Tensor:
  """[0, 255] -> (x / 255 - mean) / std, per channel."""
  mean = tf.constant(tuple(mean), tf.float32)
  std = tf.constant(tuple(std), tf.float32)
  return (pixels / 255.0 - mean) / std


def mask_centre(pixels: tf.Tensor, ratio: float) -> tf.Tensor:
  """Zeroes the central square covering `ratio` of the area of [S, S, C] pixels.

  Applied after normalization, as OFA's image-infilling input does (0 is then the
  mean colour, not black).
  """
  size = int(pixels.shape[0])
  side = int(round(size * math.sqrt(ratio)))
  if side <= 0:
    return pixels
  lo = (size - side) // 2
  idx = tf.range(size)
  inside = tf.logical_and(idx >= lo, idx < lo + side)
  square = tf.logical_and(inside[:, None], inside[None, :])
  return tf.where(square[:, :, None], tf.zeros_like(pixels), pixels)
