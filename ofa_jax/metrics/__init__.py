"""SeqIO metric functions `fn(targets, predictions) -> {name: float}` (percent).

One file per family: caption (CIDEr), vqa (VQA score), grounding (Acc@IoU 0.5),
detection (P/R/F1 at IoU 0.5), classification (accuracy), text (exact match,
WER, ROUGE-L, BLEU), sudoku (solved rate). Each family also has a chance or
constant-answer baseline helper for reports.

`get_metric(name)` resolves the OFASys metric names (`evaluation.metrics.<name>`)
and ours, importing only the module it needs (the caption and text metrics pull in
pycocoevalcap, jiwer, rouge_score and sacrebleu).
"""

from __future__ import annotations

import importlib
import types
from typing import Callable

_METRICS = types.MappingProxyType({
    "accuracy": "classification:accuracy",
    "bleu": "text:bleu",
    "cider": "caption:cider",
    "exact_match": "text:exact_match",
    "iou_acc": "grounding:iou_accuracy",
    "rouge": "text:rouge_l",
    "rouge_l": "text:rouge_l",
    "solved_acc": "sudoku:solved_rate",
    "vqa_score": "vqa:vqa_score",
    "wer": "text:wer",
    "detection_f1": "detection:detection_prf",
})


def metric_names() -> tuple[str, ...]:
  """Every registered metric name, sorted (what `metrics=` in a task may name)."""
  return tuple(sorted(_METRICS))


def get_metric(name: str) -> Callable[..., dict[str, float]]:
  """The metric function registered under `name` (KeyError lists the names)."""
  if name not in _METRICS:
    raise KeyError(f"unknown metric {name!r}; known: {', '.join(metric_names())}")
  module_name, fn_name = _METRICS[name].split(":")
  module = importlib.import_module(f"{__name__}.{module_name}")
  return getattr(module, fn_name)
