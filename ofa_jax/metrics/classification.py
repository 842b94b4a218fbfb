"""Accuracy for closed-set outputs (classification, entailment, matching)."""

from __future__ import annotations

import collections
from typing import Any, Sequence

from ofa_jax.metrics.common import as_text, check_pairs


def _label(value: Any) -> str:
  return as_text(value).strip()


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]
             ) -> dict[str, float]:
  """Percent of predictions equal to their target (surrounding spaces ignored)."""
  targets, predictions = check_pairs(targets, predictions, "accuracy")
  hits = sum(_label(t) == _label(p) for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / len(targets)}


def chance_baseline(num_classes: int) -> float:
  """Expected accuracy of a uniform guess among `num_classes` labels."""
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  return 100.0 / num_classes


def majority_baseline(targets: Sequence[Any]) -> float:
  """Accuracy of always answering the most frequent target label."""
  labels = [_label(t) for t in targets]
  if not labels:
    raise ValueError("majority_baseline: no targets")
  return 100.0 * collections.Counter(labels).most_common(1)[0][1] / len(labels)
