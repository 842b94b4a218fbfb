"""Shared helpers of the metric functions.

Every metric follows SeqIO's contract `fn(targets, predictions) -> {name: float}`,
where targets and predictions are the *postprocessed* Python values (strings,
boxes, lists of (box, label)). Scores are percentages (0-100), as in t5x / SeqIO
reports and in the OFASys results table (CIDEr 134.8, WER 7.5), and so are the
chance baselines, so that a report can print them side by side.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

_WORD = re.compile(r"[^\W_]+")


def check_pairs(targets: Sequence[Any], predictions: Sequence[Any],
                metric: str) -> tuple[list[Any], list[Any]]:
  """Lists of targets and predictions, checked to be non-empty and aligned."""
  targets, predictions = list(targets), list(predictions)
  if len(targets) != len(predictions):
    raise ValueError(f"{metric}: {len(targets)} targets but "
                     f"{len(predictions)} predictions")
  if not targets:
    raise ValueError(f"{metric}: no examples to score")
  return targets, predictions


def words(text: str) -> list[str]:
  """Lower-cased words with every punctuation mark removed.

  Why not the COCO PTB tokenizer: it needs Java. Dropping punctuation and case
  is what the PTB step effectively does for the caption metrics; contractions
  are split at the apostrophe ("don't" -> "don", "t") instead of PTB's "do n't",
  which changes n-gram counts of both sides alike.
  """
  return _WORD.findall(as_text(text).lower())


def normalize_answer(text: Any) -> str:
  """Case, surrounding spaces, inner runs of spaces and a final period ignored."""
  text = " ".join(as_text(text).lower().split())
  return text[:-1].rstrip() if text.endswith(".") else text


def as_references(target: Any, where: str = "an example") -> list[str]:
  """One reference string or a list of them -> a non-empty list of strings.

  `where` names the metric and example in the error (e.g. "bleu: target 3").
  """
  refs = [target] if isinstance(target, (str, bytes)) else list(target)
  refs = [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in refs]
  if not refs:
    raise ValueError(f"{where} has no reference (got {target!r})")
  return refs


def as_text(value: Any) -> str:
  """A str from a str or UTF-8 bytes (SeqIO postprocessors may give either)."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
