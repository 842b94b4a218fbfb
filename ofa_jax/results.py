"""Typed inference results, and drawing predicted boxes on their images.

Why a typed result and not the raw postprocessed value: a user of the Python API
asks "what is the caption / the box / the label" without knowing how the task
decodes. A `Result` carries every view that makes sense for the target slot:
`.text` always (the decoded output, prompt removed), `.box` (x0, y0, x1, y1 in
pixels of the *original* image) for a box target, `.boxes` (box, label) pairs for
detection-style targets, `.label` for a closed set, `.image` (uint8 [H, W, 3],
`save_image`) for a generated picture, and `.score`, the decoder's
log-probability of the output (the beam score; a candidate's log-probability
among the answers under all-candidate scoring). A picture sampled as one of n
candidates also carries every candidate (`.images`) and their ranking scores
(`.scores`; `decoding.rerank`).

Pictures are never inlined in JSON (`to_json`): they are files, written with
`save_image` / `write_png`, whose paths the writers record.
"""

from __future__ import annotations

import dataclasses
import io
import os
import types
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]
# Field metadata of a Result's typed views.
_VIEW = types.MappingProxyType({"view": True})


def is_picture(value: Any) -> bool:
  """True for a uint8 [H, W, 3] array (a generated picture)."""
  return (isinstance(value, np.ndarray) and value.dtype == np.uint8
          and value.ndim == 3 and value.shape[-1] == 3)


def write_png(path: str, picture: Any) -> str:
  """Writes a uint8 [H, W, 3] picture as a PNG file (folders made); its path."""
  arr = np.asarray(picture)
  if not is_picture(arr):
    raise ValueError(f"write_png({path!r}): expected a uint8 [H, W, 3] picture, "
                     f"got {arr.dtype} {arr.shape}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(arr, "RGB").save(path, format="PNG")
  return path


def picture_view(value: Any) -> dict[str, Any]:
  """`Result.image` of a prediction whose value is a picture (None otherwise).

  The view of decoding kinds with code targets: their answers are rendered
  into a picture, which is the prediction's value.
  """
  return dict(image=value if is_picture(value) else None)


def load_image(image: Any) -> Image.Image:
  """A PIL RGB image from a path, encoded bytes, a uint8 array or a PIL image."""
  if isinstance(image, Image.Image):
    return image.convert("RGB")
  if isinstance(image, (str, os.PathLike)):
    if not os.path.isfile(image):
      raise FileNotFoundError(f"image file {os.fspath(image)!r} does not exist")
    with Image.open(image) as im:
      return im.convert("RGB")
  if isinstance(image, (bytes, bytearray)):
    try:
      with Image.open(io.BytesIO(bytes(image))) as im:
        return im.convert("RGB")
    except OSError as e:
      raise ValueError(f"cannot decode the image bytes: {e}") from e
  arr = np.asarray(image)
  if arr.ndim == 3 and arr.shape[-1] == 3:
    return Image.fromarray(arr.astype(np.uint8), "RGB")
  raise ValueError(f"cannot read an image from a {type(image).__name__} "
                   "(expected a path, encoded bytes, uint8 [H, W, 3] or a PIL image)")


@dataclasses.dataclass
class Result:
  """One example's prediction.

  Attributes:
    text: the decoded output (forced prompt removed; box targets read as their
      `<bin_k>` tokens).
    value: the task's postprocessed value (str, box list, [(box, label)], ...).
    score: log-probability of the output under the model (see module doc).
    kind: the decoding kind ("text", "box", "closed_set", "image_codes").
    tokens: the decoded ids (prompt, answer, `</s>`, padding).
    box: (x0, y0, x1, y1) in original-image pixels for a box target, else None.
    boxes: [(box, label), ...] for interleaved box/label targets (detection).
    label: the chosen label of a closed set, else None.
    image: the generated picture, uint8 [H, W, 3] (a target rendered from its
      codes, postprocessed by its modality), else None.
    images: every sampled candidate picture when several were drawn (the
      chosen one is `image`), else [].
    scores: the candidates' ranking scores, one per `images` entry: the
      scorer's (`decoding.rerank`), or without a scorer the decoder's
      log-probabilities (the first candidate is then kept).
    input_image: the example's first input image as given (path, bytes,
      array, PIL), used by `draw_box` / `save_box` when no image is passed.
  """

  text: str
  value: Any
  score: float
  kind: str
  tokens: np.ndarray = dataclasses.field(repr=False,
                                         default_factory=lambda: np.zeros(0))
  # The typed views (`_VIEW`): filled by the decoding kind's `views`.
  box: Optional[Box] = dataclasses.field(default=None, metadata=_VIEW)
  boxes: list[tuple[Box, str]] = dataclasses.field(default_factory=list,
                                                   metadata=_VIEW)
  label: Optional[str] = dataclasses.field(default=None, metadata=_VIEW)
  image: Optional[np.ndarray] = dataclasses.field(default=None, repr=False,
                                                  metadata=_VIEW)
  images: list[np.ndarray] = dataclasses.field(default_factory=list,
                                               repr=False)
  scores: list[float] = dataclasses.field(default_factory=list)
  input_image: Any = dataclasses.field(default=None, repr=False)
  # A prediction; an input that could not be run is an
  # `api.InferenceError`, whose `ok` is False.
  ok: ClassVar[bool] = True

  @classmethod
  def from_prediction(cls, *, text: str, value: Any, score: float, kind: str,
                      tokens: Any = None, input_image: Any = None,
                      candidates: Optional[Sequence[np.ndarray]] = None,
                      candidate_scores: Optional[Sequence[float]] = None,
                      image: Any = None) -> "Result":
    """Fills the typed views from the postprocessed value of the target slot.

    The modalities say which views a value has: those they recognize in any
    prediction (`Modality.prediction_views`, e.g. (box, label) pairs), then
    those of the decoding kind (`DecodingKind.views`, e.g. a box target's
    box; a kind with code targets and no views of its own: `picture_view`,
    its value is the rendered picture), so no kind is named here.

    `input_image` is the example's input image (`draw_box`'s canvas); `image`
    is its former spelling, kept for callers of the box views. `candidates`
    and `candidate_scores` are the sampled pictures and their ranking scores.
    """
    from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
    from ofa_jax.decoding import spec as decoding_spec  # pylint: disable=g-import-not-at-top
    if image is not None and input_image is not None:
      raise ValueError("Result.from_prediction: give input_image= (image= is its "
                       "former spelling), not both")
    views = modalities.prediction_views(value)
    decoding_kind = decoding_spec.kind_of(kind)
    views_fn = decoding_kind.views
    if views_fn is None and decoding_kind.code_targets:
      views_fn = picture_view
    if views_fn is not None:
      views.update(views_fn(value))
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
      raise ValueError(f"decoding kind {kind!r} gives views {unknown}, which are "
                       f"not Result fields; the views are {list(VIEWS)}")
    pictures = [np.asarray(c) for c in (candidates if candidates is not None
                                        else ())]
    ranking = [float(x) for x in (candidate_scores if candidate_scores
                                  is not None else ())]
    if len(ranking) != len(pictures):
      raise ValueError(f"Result.from_prediction: {len(pictures)} candidates but "
                       f"{len(ranking)} candidate scores")
    return cls(text=text, value=value, score=float(score), kind=kind,
               tokens=np.asarray(tokens if tokens is not None else []),
               images=pictures, scores=ranking,
               input_image=input_image if image is None else image, **views)

  # ---- drawing ---------------------------------------------------------------
  def _all_boxes(self) -> list[tuple[Box, str]]:
    if self.box is not None:
      return [(self.box, self.label or "")]
    return list(self.boxes)

  def draw_box(self, image: Any = None, *, color: str = "red", width: int = 2
               ) -> Image.Image:
    """A copy of the image with the predicted box(es) (and labels) drawn on it.

    `image` defaults to the example's input image. Raises ValueError when the
    result has no box, or when there is no image to draw on.
    """
    pairs = self._all_boxes()
    if not pairs:
      raise ValueError(f"this result has no box to draw (kind {self.kind!r}, "
                       f"text {self.text!r})")
    source = self.input_image if image is None else image
    if source is None:
      raise ValueError("draw_box: no image given and the example had none")
    canvas = load_image(source).copy()
    draw = ImageDraw.Draw(canvas)
    for (x0, y0, x1, y1), label in pairs:
      draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                     outline=color, width=max(1, int(width)))
      if label:
        draw.text((min(x0, x1) + 2, min(y0, y1) + 1), label, fill=color)
    return canvas

  def save_box(self, path: str, image: Any = None, **kwargs: Any) -> str:
    """Draws the box(es) (see `draw_box`) and saves the picture to `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    self.draw_box(image, **kwargs).save(path)
    return path

  def save_image(self, path: str) -> str:
    """Writes the generated picture (`image`) as a PNG file; returns `path`.

    Raises ValueError when the result has no picture (not a generated image).
    """
    if self.image is None:
      raise ValueError(f"this result has no generated image to save (kind "
                       f"{self.kind!r}, text {self.text[:40]!r})")
    return write_png(path, self.image)

  def to_json(self) -> dict[str, Any]:
    """A JSON-able dict (what `python -m ofa_jax.infer` writes per line).

    Pictures are left out (a picture value is null): they are files, whose
    paths the writer adds (`save_image`, `write_png`).
    """
    from ofa_jax.evaluation import runner as evaluation_lib  # pylint: disable=g-import-not-at-top
    value = None if is_picture(self.value) else self.value
    out: dict[str, Any] = {"text": self.text, "value": value,
                           "score": self.score, "kind": self.kind}
    for name in VIEWS:  # the views a prediction has (None / empty: absent)
      view = getattr(self, name)
      if view is None or is_picture(view) or (isinstance(view, list)
                                              and not view):
        continue
      out[name] = _lists(view)
    if self.scores:
      out["candidate_scores"] = list(self.scores)
    return evaluation_lib.to_jsonable(out)


# The typed views a decoding kind may fill (`DecodingKind.views`), in JSON order.
VIEWS = tuple(f.name for f in dataclasses.fields(Result) if f.metadata.get(
    "view"))


def _lists(value: Any) -> Any:
  """Tuples (a box, a (box, label) pair) as lists, as JSON writes them."""
  if isinstance(value, (list, tuple)):
    return [_lists(v) for v in value]
  return value


def draw_results(results: Sequence[Result], path: str, *, columns: int = 4,
                 size: int = 160) -> str:
  """A contact sheet of results with boxes drawn and the text under each picture."""
  tiles = []
  for r in results:
    try:
      if r.box or r.boxes:
        im = r.draw_box()
      else:
        im = load_image(r.image if r.image is not None else r.input_image)
    except ValueError:
      im = Image.new("RGB", (size, size), "white")
    im = im.resize((size, size))
    tile = Image.new("RGB", (size, size + 28), "white")
    tile.paste(im, (0, 0))
    ImageDraw.Draw(tile).text((2, size + 2), r.text[:40], fill="black")
    tiles.append(tile)
  if not tiles:
    raise ValueError("draw_results: no results to draw")
  rows = (len(tiles) + columns - 1) // columns
  sheet = Image.new("RGB", (columns * size, rows * (size + 28)), "white")
  for i, tile in enumerate(tiles):
    sheet.paste(tile, ((i % columns) * size, (i // columns) * (size + 28)))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sheet.save(path)
  return path
