"""Object detection: precision, recall and F1 at IoU 0.5, greedy per label.

The OFASys detection task is pretraining only and has no metric; the demo needs
one that a generated caption-like list of objects can be scored with. A target
or a prediction is a list of objects, each `(box, label)` or
`{"box": [x0, y0, x1, y1], "label": str}`. The decoder emits no confidences, so
predictions are matched in the order they were generated: each one takes the
still-unmatched target of the same label with the highest IoU, if that IoU is
>= 0.5. Counts are summed over the corpus (micro average).
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

from ofa_jax.metrics.common import check_pairs, normalize_answer
from ofa_jax.metrics.grounding import IOU_THRESHOLD, as_box, box_iou

Obj = tuple[tuple[float, float, float, float], str]


def as_objects(value: Any, what: str) -> list[Obj]:
  """A list of (box, normalized label); ValueError naming `what` otherwise."""
  if value is None:
    return []
  objects = []
  for k, item in enumerate(value):
    if isinstance(item, Mapping):
      box, label = item.get("box"), item.get("label")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
      box, label = item
    else:
      raise ValueError(f"{what}, object {k}: expected (box, label), "
                       f"got {item!r}")
    if label is None or box is None:
      raise ValueError(f"{what}, object {k}: needs a box and a label: {item!r}")
    objects.append((as_box(box, f"{what}, object {k}"),
                    normalize_answer(label)))
  return objects


def match_count(gold: list[Obj], predicted: list[Obj]) -> int:
  """True positives of one image under greedy same-label IoU matching."""
  used = [False] * len(gold)
  hits = 0
  for box, label in predicted:
    best, best_iou = -1, IOU_THRESHOLD
    for j, (gold_box, gold_label) in enumerate(gold):
      if used[j] or gold_label != label:
        continue
      iou = box_iou(box, gold_box)
      if iou >= best_iou:
        best, best_iou = j, iou
    if best >= 0:
      used[best] = True
      hits += 1
  return hits


def detection_prf(targets: Sequence[Any], predictions: Sequence[Any]
                  ) -> dict[str, float]:
  """Micro precision, recall and F1 in percent (0 where the denominator is 0)."""
  targets, predictions = check_pairs(targets, predictions, "detection_prf")
  hits = n_gold = n_pred = 0
  for i, (target, prediction) in enumerate(zip(targets, predictions)):
    gold = as_objects(target, f"detection_prf: target {i}")
    pred = as_objects(prediction, f"detection_prf: prediction {i}")
    hits += match_count(gold, pred)
    n_gold += len(gold)
    n_pred += len(pred)
  precision = 100.0 * hits / n_pred if n_pred else 0.0
  recall = 100.0 * hits / n_gold if n_gold else 0.0
  f1 = (2 * precision * recall / (precision + recall)
        if precision + recall else 0.0)
  return {"precision": precision, "recall": recall, "f1": f1}


def constant_object_baseline(targets: Sequence[Any]) -> float:
  """F1 of predicting, for every image, the commonest label at its mean box."""
  golds = [as_objects(t, f"constant_object_baseline: target {i}")
           for i, t in enumerate(targets)]
  labels = collections.Counter(label for gold in golds for _, label in gold)
  if not labels:
    raise ValueError("constant_object_baseline: the targets have no objects")
  label = max(sorted(labels), key=lambda name: labels[name])
  boxes = [box for gold in golds for box, name in gold if name == label]
  mean = [sum(b[k] for b in boxes) / len(boxes) for k in range(4)]
  return detection_prf(golds, [[(mean, label)]] * len(golds))["f1"]
