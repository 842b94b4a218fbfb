"""The VQA score (VQA-v2, MSR-VTT QA): partial credit by human agreement.

A target is one of
* a string: one correct answer (then the score is exact match);
* a list of the human answers (VQA-v2 has 10): an answer said by k humans scores
  min(k / 3, 1), the VQA accuracy formula;
* a mapping answer -> score, the OFA TSV form that stores precomputed
  confidences (e.g. {"yes": 1.0, "no": 0.3}).
Answers are compared after `common.normalize_answer` (case, spaces, final period).
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

from ofa_jax.metrics.common import check_pairs, normalize_answer


def answer_scores(target: Any) -> dict[str, float]:
  """The credit each (normalized) answer gets for this target."""
  if isinstance(target, Mapping):
    scores = {normalize_answer(k): float(v) for k, v in target.items()}
    bad = {k: v for k, v in scores.items() if not 0.0 <= v <= 1.0}
    if bad:
      raise ValueError(f"vqa_score: answer scores must be in [0, 1], got {bad}")
    return scores
  if isinstance(target, (str, bytes)):
    answer = target.decode("utf-8") if isinstance(target, bytes) else target
    return {normalize_answer(answer): 1.0}
  counts = collections.Counter(normalize_answer(a) for a in target)
  if not counts:
    raise ValueError("vqa_score: a target has no answers")
  return {a: min(k / 3.0, 1.0) for a, k in counts.items()}


def vqa_score(targets: Sequence[Any], predictions: Sequence[Any]
              ) -> dict[str, float]:
  """Mean VQA score in percent."""
  targets, predictions = check_pairs(targets, predictions, "vqa_score")
  total = sum(answer_scores(t).get(normalize_answer(p), 0.0)
              for t, p in zip(targets, predictions))
  return {"vqa_score": 100.0 * total / len(targets)}


def chance_baseline(targets: Sequence[Any], candidates: Sequence[str]
                    ) -> float:
  """Expected VQA score of a uniform guess in the closed answer set."""
  candidates = sorted({normalize_answer(c) for c in candidates})
  targets = list(targets)
  if not candidates or not targets:
    raise ValueError("chance_baseline: needs targets and candidate answers")
  total = 0.0
  for target in targets:
    scores = answer_scores(target)
    total += sum(scores.get(c, 0.0) for c in candidates) / len(candidates)
  return 100.0 * total / len(targets)


def majority_baseline(targets: Sequence[Any]) -> float:
  """VQA score of always giving the one answer with the highest total credit."""
  targets = list(targets)
  if not targets:
    raise ValueError("majority_baseline: no targets")
  totals: collections.Counter = collections.Counter()
  for target in targets:
    totals.update(answer_scores(target))
  best = max(sorted(totals), key=lambda a: totals[a])
  return 100.0 * totals[best] / len(targets)
