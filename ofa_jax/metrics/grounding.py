"""Visual grounding: accuracy at IoU >= 0.5 (OFASys `iou_acc`, RefCOCO Acc@0.5).

Boxes are [x0, y0, x1, y1] in pixels of the original image (the BOX modality
maps predicted bins back with the image geometry before metrics see them).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from ofa_jax.metrics.common import check_pairs

IOU_THRESHOLD = 0.5


def as_box(value: Any, what: str) -> tuple[float, float, float, float]:
  """Four finite numbers, or a ValueError naming `what`."""
  try:
    box = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"{what}: expected [x0, y0, x1, y1], got {value!r}"
                     ) from None
  if len(box) != 4 or not all(math.isfinite(v) for v in box):
    raise ValueError(f"{what}: expected 4 finite numbers, got {value!r}")
  return box  # type: ignore[return-value]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union; an inverted box has zero area."""
  ax0, ay0, ax1, ay1 = a
  bx0, by0, bx1, by1 = b
  area_a = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0)
  area_b = max(0.0, bx1 - bx0) * max(0.0, by1 - by0)
  inter = (max(0.0, min(ax1, bx1) - max(ax0, bx0))
           * max(0.0, min(ay1, by1) - max(ay0, by0)))
  union = area_a + area_b - inter
  return inter / union if union > 0 else 0.0


def iou_accuracy(targets: Sequence[Any], predictions: Sequence[Any]
                 ) -> dict[str, float]:
  """Percent of predicted boxes with IoU >= 0.5 to the target, and mean IoU.

  A prediction of None (the decoder produced no valid box) counts as a miss.
  """
  targets, predictions = check_pairs(targets, predictions, "iou_accuracy")
  hits, total_iou = 0, 0.0
  for i, (target, prediction) in enumerate(zip(targets, predictions)):
    gold = as_box(target, f"iou_accuracy: target {i}")
    iou = 0.0 if prediction is None else box_iou(
        gold, as_box(prediction, f"iou_accuracy: prediction {i}"))
    hits += iou >= IOU_THRESHOLD
    total_iou += iou
  n = len(targets)
  return {"iou_acc": 100.0 * hits / n, "mean_iou": 100.0 * total_iou / n}


def constant_box_baseline(targets: Sequence[Any],
                          box: Optional[Sequence[float]] = None) -> float:
  """Acc@0.5 of answering one fixed box (by default the mean target box).

  The grounding analogue of a chance level: what a model that ignores the text
  and the image gets.
  """
  gold = [as_box(t, f"constant_box_baseline: target {i}")
          for i, t in enumerate(targets)]
  if not gold:
    raise ValueError("constant_box_baseline: no targets")
  if box is None:
    box = [sum(b[k] for b in gold) / len(gold) for k in range(4)]
  return iou_accuracy(gold, [box] * len(gold))["iou_acc"]
