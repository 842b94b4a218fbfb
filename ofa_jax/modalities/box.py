"""BOX: boxes in original pixels <-> 4 location tokens `<bin_k>` per box.

Preprocessing (both sides): a box `[x0, y0, x1, y1]` in ORIGINAL image pixels (or
[n, 4] boxes, or a string "x0,y0,x1,y1" as in OFA's TSV files) is

1. co-transformed with the example's first input image: processed = orig * scale +
   offset, from `ctx.geometry` (image.IMAGE_GEOMETRY: orig_h, orig_w,
   scale_y, scale_x, offset_y, offset_x); without an image the box is taken as is;
2. clipped to the processed image [0, image_size]; a box that had to be clipped is
   counted in `num_clipped` (the plan reports it), never dropped;
3. quantized as OFA does: k = round(x / max_image_size * (num_bins - 1)).

Options: `max_image_size` (attribute, else task option) is the side the bins span;
it defaults to the processed image size `image_size` (task option, default 480, the
IMAGE default). `num_bins` comes from the vocabulary (a task option `num_bins` that
disagrees is an error).

Postprocessing inverts it: bins -> processed pixels -> original pixels through the
inverse geometry. A round trip is exact to half a bin in processed pixels.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from ofa_jax import features
from ofa_jax.modalities import image as image_lib
from ofa_jax.modalities.base import SlotContext, TokenModality, TokenSlotOutput
from ofa_jax.modalities.options import slot_option
from ofa_jax.modalities.spec import BOTH_SIDES, AttrSpec, DecodingKind
from ofa_jax.modalities.text import require_vocab

DEFAULT_IMAGE_SIZE = image_lib.DEFAULT_IMAGE_SIZE  # boxes live in its frame
_SIZE_KEYS = ("image_size", "max_image_size")
_BIN_RE = re.compile(r"<bin_[0-9]+>")

Box = tuple[float, float, float, float]


def as_box(value: Any) -> Optional[Box]:
  """A finite (x0, y0, x1, y1) from a postprocessed box (None: no whole box)."""
  if value is None:
    return None
  arr = np.asarray(value, np.float64).reshape(-1)
  if arr.shape != (4,) or not np.all(np.isfinite(arr)):
    return None
  return tuple(float(x) for x in arr)  # type: ignore[return-value]


def _box_constraints(spec: Any, layout: Any) -> tuple:
  """Exactly 4 bins per box, `spec.num_boxes` boxes."""
  from ofa_jax.decoding import constraints as dc  # pylint: disable=g-import-not-at-top
  return (dc.box_constraint(layout, spec.num_boxes),)


def _box_run_constraints(spec: Any, layout: Any) -> tuple:
  """Text with runs of exactly 4 bins in it (detection's box-label lists)."""
  del spec
  from ofa_jax.decoding import constraints as dc  # pylint: disable=g-import-not-at-top
  return (dc.BoxRunConstraint(layout),)


def _box_view(value: Any) -> dict[str, Any]:
  """`Result.box`: the box in original-image pixels, None when incomplete."""
  return {"box": as_box(value)}




# A lone BOX target: exactly 4 bins; trained together with text: both.
BOX_KIND = DecodingKind("box", fixed_length=True, constraints=_box_constraints,
                        views=_box_view)
BOXES_IN_TEXT = DecodingKind("text_and_boxes", constraints=_box_run_constraints)


def box_sizes(ctx: SlotContext | Mapping[str, Any]) -> tuple[float, float]:
  """(image_size, max_image_size) of a slot: the clip range and the bin span."""
  if isinstance(ctx, SlotContext):
    image_size = slot_option(ctx, None, ("image_size",), DEFAULT_IMAGE_SIZE, float)
    max_size = slot_option(ctx, "max_image_size", ("max_image_size",), image_size, float)
    where = ctx.where()
  else:
    image_size = float(ctx.get("image_size", DEFAULT_IMAGE_SIZE))
    max_size = float(ctx.get("max_image_size", image_size))
    where = "BOX postprocess"
  if image_size <= 0 or max_size <= 0:
    raise ValueError(f"{where}: image_size={image_size} and max_image_size={max_size} "
                     "must be > 0")
  return image_size, max_size


def _check_bins(ctx: SlotContext, vocab) -> None:
  want = slot_option(ctx, None, ("num_bins",), vocab.num_bins, int)
  if want != vocab.num_bins:
    raise ValueError(f"{ctx.where()}: option num_bins={want} but the vocabulary has "
                     f"{vocab.num_bins} bins")


def _as_boxes(value: Any, ctx: SlotContext) -> tf.Tensor:
  """float32 [n, 4] from a [4] / [n, 4] numeric tensor or a 'x0,y0,x1,y1' string."""
  value = tf.convert_to_tensor(value)
  if value.dtype == tf.string:
    if value.shape.rank != 0:
      raise ValueError(f"{ctx.where()}: a BOX string must be a scalar 'x0,y0,x1,y1'")
    parts = tf.strings.split(tf.strings.regex_replace(value, r"[\s;]+", ","), ",")
    parts = tf.boolean_mask(parts, tf.strings.length(parts) > 0)
    value = tf.strings.to_number(parts, tf.float32)
  if not (value.dtype.is_floating or value.dtype.is_integer):
    raise ValueError(f"{ctx.where()}: a BOX must be numbers, got {value.dtype.name}")
  rank = value.shape.rank
  if rank is not None and (rank not in (1, 2) or (rank == 2 and value.shape[-1] not in
                                                  (None, 4))):
    raise ValueError(f"{ctx.where()}: a BOX must be [4] or [n, 4], got {value.shape}")
  value = tf.cast(value, tf.float32)
  with tf.control_dependencies([tf.debugging.assert_equal(
      tf.size(value) % 4, 0, message=f"{ctx.where()}: BOX needs 4 numbers per box")]):
    return tf.reshape(value, [-1, 4])


def _geometry(geometry) -> tuple[Any, Any, Any, Any]:
  g = geometry
  return g[3], g[2], g[5], g[4]  # scale_x, scale_y, offset_x, offset_y


def quantize_boxes(boxes: tf.Tensor, geometry: Optional[tf.Tensor], image_size: float,
                   max_image_size: float, num_bins: int) -> tuple[tf.Tensor, tf.Tensor]:
  """float [n, 4] original pixels -> (int32 [n, 4] bin indices, int32 [] clipped)."""
  if geometry is not None:
    sx, sy, ox, oy = _geometry(tf.cast(geometry, tf.float32))
    scale = tf.stack([sx, sy, sx, sy])
    offset = tf.stack([ox, oy, ox, oy])
    boxes = boxes * scale + offset
  clipped = tf.clip_by_value(boxes, 0.0, image_size)
  num_clipped = tf.reduce_sum(tf.cast(tf.reduce_any(
      tf.not_equal(clipped, boxes), axis=-1), tf.int32))
  k = tf.round(clipped / max_image_size * (num_bins - 1))
  k = tf.clip_by_value(k, 0.0, num_bins - 1.0)
  return tf.cast(k, tf.int32), num_clipped


def dequantize_boxes(bins: np.ndarray, geometry: Optional[np.ndarray],
                     max_image_size: float, num_bins: int) -> np.ndarray:
  """int [n, 4] bin indices -> float32 [n, 4] boxes in original pixels."""
  boxes = np.asarray(bins, np.float64) / (num_bins - 1) * max_image_size
  if geometry is not None:
    g = np.asarray(geometry, np.float64)
    scale = np.array([g[3], g[2], g[3], g[2]])
    offset = np.array([g[5], g[4], g[5], g[4]])
    if np.any(scale == 0):
      raise ValueError(f"image geometry {g.tolist()} has a zero scale")
    boxes = (boxes - offset) / scale
  return boxes.astype(np.float32)


class BoxProcessor(TokenModality):
  """The BOX modality (see the module docstring).

  As a target it decodes as exactly 4 bins ("box"); trained together with text
  (detection's `[BOX][TEXT]` groups) every target token may be text or a bin
  ("text_and_boxes"), and the prediction becomes (box, label) pairs.
  """

  name = "BOX"
  attributes = (AttrSpec("max_image_size", "int", BOTH_SIDES,
                         doc="side that the 1000 bins span"),)
  uses_geometry = True
  solo_decoding = (BOX_KIND.name, {"max_len": 4, "min_len": 4})
  mixed_decoding = BOXES_IN_TEXT.name
  decoding_kinds = (BOX_KIND, BOXES_IN_TEXT)
  mixed_token_kind = int(features.TokenKind.TEXT_OR_BIN)

  def prediction_views(self, value: Any) -> dict[str, Any]:
    """`Result.boxes`: the complete (box, label) pairs of any prediction that
    is a non-empty list of pairs (detection's box-label lists)."""
    if not (isinstance(value, list) and value and all(
        isinstance(v, (list, tuple)) and len(v) == 2 for v in value)):
      return {}
    pairs = []
    for b, label in value:
      b = as_box(b)
      if b is not None:
        pairs.append((b, str(label)))
    return {"boxes": pairs}

  def to_tensor(self, value: Any, where: str) -> tf.Tensor:
    if isinstance(value, (str, bytes)):
      return tf.constant(value)
    arr = np.asarray(value, np.float32)
    if arr.shape[-1:] != (4,):
      raise ValueError(f"{where}: a box is 4 numbers (x0, y0, x1, y1), got shape "
                       f"{arr.shape}")
    return tf.constant(arr)

  def placeholder(self, grouped: bool, labels: Any) -> tf.Tensor:
    del labels
    return tf.zeros([0, 4] if grouped else [4], tf.float32)

  def postprocess_prediction(self, text: str, plan: Any,
                             example: Optional[Mapping[str, Any]], kind: str
                             ) -> Any:
    """"box": a box [4] in original pixels (None when no complete box was
    decoded: a metric counts a miss, never crashes); "text_and_boxes":
    [(box, label), ...]."""
    if kind == self.mixed_decoding:
      return self._box_label_pairs(plan, text, example)
    ids = plan.vocab.encode(text)
    box = np.asarray(self.postprocess(np.asarray(ids), _box_ctx(plan, example)),
                     np.float64)
    return box.tolist() if np.all(np.isfinite(box)) else None

  def _box_label_pairs(self, plan: Any, text: str, example: Any
                       ) -> list[tuple[list[float], str]]:
    """`<bin>x4 label <bin>x4 label ...` -> [(box in pixels, label), ...]."""
    ctx = _box_ctx(plan, example)
    out = []
    bins = list(_BIN_RE.finditer(text))
    k = 0
    while k + 4 <= len(bins):
      group = bins[k:k + 4]
      end = bins[k + 4].start() if k + 4 < len(bins) else len(text)
      label = text[group[-1].end():end].strip()
      ids = plan.vocab.encode("".join(b.group(0) for b in group))
      box = self.postprocess(np.asarray(ids), ctx)
      out.append((np.asarray(box, np.float64).tolist(), label))
      k += 4
    return out

  def _tokens(self, value: Any, ctx: SlotContext) -> TokenSlotOutput:
    vocab = require_vocab(ctx)
    _check_bins(ctx, vocab)
    image_size, max_size = box_sizes(ctx)
    boxes = _as_boxes(value, ctx)
    k, num_clipped = quantize_boxes(boxes, ctx.geometry, image_size, max_size,
                                    vocab.num_bins)
    ids = tf.reshape(vocab.bin_id(k), [-1])
    kinds = tf.fill(tf.shape(ids), int(features.TokenKind.BIN))
    return TokenSlotOutput(ids, kinds, num_clipped)

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    return self._tokens(value, ctx)

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    return self._tokens(value, ctx)

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> np.ndarray:
    """Decoded ids -> boxes in original pixels.

    ctx: `vocab` (required), `image_geometry` (float [6], optional), `image_size`,
    `max_image_size`, and `multiple` (default False). Non-bin ids (<s>, </s>,
    padding, text) are skipped. With `multiple=False` the first 4 bins give a
    float32 [4] box, or [nan]*4 when fewer than 4 bins were decoded (an IoU metric
    then scores 0 instead of crashing the evaluation). With `multiple=True`, every
    complete group of 4 bins gives one row of a float32 [n, 4] array.
    """
    vocab = require_vocab(ctx)
    ids = np.asarray(tokens).reshape(-1)
    bins = ids[np.asarray(vocab.is_bin(ids), bool)] - vocab.bin_offset
    _, max_size = box_sizes(ctx)
    geometry = ctx.get("image_geometry")
    if ctx.get("multiple", False):
      n = len(bins) // 4
      return dequantize_boxes(bins[:4 * n].reshape(n, 4), geometry, max_size,
                              vocab.num_bins)
    if len(bins) < 4:
      return np.full([4], np.nan, np.float32)
    return dequantize_boxes(bins[None, :4], geometry, max_size, vocab.num_bins)[0]


def _box_ctx(plan: Any, example: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  """The postprocessing context of a task's boxes: the sizes preprocessing used
  (the first input image slot's attributes win over the task options) and the
  example's first image geometry."""
  ctx: dict[str, Any] = {"vocab": plan.vocab}
  for k in _SIZE_KEYS:
    if k in plan.options:
      ctx[k] = plan.options[k]
  image = next((s for s in plan.template.alternatives[0].source_slots()
                if s.modality == image_lib.IMAGE.name), None)
  for k in _SIZE_KEYS:
    if image is not None and image.attrs.get(k) is not None:
      ctx[k] = image.attrs[k]
  if example is not None and image_lib.IMAGE_GEOMETRY in example:
    geometry = np.asarray(example[image_lib.IMAGE_GEOMETRY])
    if geometry.ndim == 2 and geometry.shape[0] > 0:
      ctx["image_geometry"] = geometry[0]
  return ctx


BOX = BoxProcessor()
