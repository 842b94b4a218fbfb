"""Text generation metrics through their reference libraries.

WER is `jiwer`, ROUGE-L is Google's `rouge_score`, BLEU is `sacrebleu`: the
implementations the published numbers (LibriSpeech, NIv2 / Gigaword, DART /
FeTaQA) are computed with, so our figures are comparable to theirs.
"""

from __future__ import annotations

from typing import Any, Sequence

import jiwer
import sacrebleu
from rouge_score import rouge_scorer

from ofa_jax.metrics.common import as_references, as_text, check_pairs, words


def _squash(text: Any) -> str:
  return " ".join(as_text(text).split())


def exact_match(targets: Sequence[Any], predictions: Sequence[Any]
                ) -> dict[str, float]:
  """Percent of predictions equal to (one of) their target(s).

  Runs of whitespace are ignored (decoders and detokenizers differ on them);
  case and punctuation count, as they do in SQL or in a sudoku grid.
  """
  targets, predictions = check_pairs(targets, predictions, "exact_match")
  hits = sum(_squash(p) in {_squash(r)
                            for r in as_references(t, f"exact_match: target {i}")}
             for i, (t, p) in enumerate(zip(targets, predictions)))
  return {"exact_match": 100.0 * hits / len(targets)}


def wer(targets: Sequence[Any], predictions: Sequence[Any]
        ) -> dict[str, float]:
  """Corpus word error rate in percent (lower is better), via `jiwer`.

  Both sides are normalized to lower-case words without punctuation first
  (`common.words`), as ASR scoring scripts do.
  """
  targets, predictions = check_pairs(targets, predictions, "wer")
  refs = [" ".join(words(t)) for t in targets]
  hyps = [" ".join(words(p)) for p in predictions]
  for i, ref in enumerate(refs):
    if not ref:
      raise ValueError(f"wer: target {i} ({targets[i]!r}) has no words")
  return {"wer": 100.0 * jiwer.wer(refs, hyps)}


def rouge_l(targets: Sequence[Any], predictions: Sequence[Any]
            ) -> dict[str, float]:
  """Mean ROUGE-L F-measure in percent; the best reference counts per example.

  Porter stemming is on, as in the NIv2 and Gigaword evaluations.
  """
  targets, predictions = check_pairs(targets, predictions, "rouge_l")
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  total = 0.0
  for i, (target, prediction) in enumerate(zip(targets, predictions)):
    total += max(scorer.score(ref, as_text(prediction))["rougeL"].fmeasure
                 for ref in as_references(target, f"rouge_l: target {i}"))
  return {"rouge_l": 100.0 * total / len(targets)}


def bleu(targets: Sequence[Any], predictions: Sequence[Any]
         ) -> dict[str, float]:
  """Corpus BLEU (sacrebleu defaults: 13a tokenization, exponential smoothing).

  A target may be a list of references; examples may have different numbers of
  them (missing ones are passed to sacrebleu as None).
  """
  targets, predictions = check_pairs(targets, predictions, "bleu")
  refs = [as_references(t, f"bleu: target {i}") for i, t in enumerate(targets)]
  width = max(len(r) for r in refs)
  streams = [[r[k] if k < len(r) else None for r in refs]
             for k in range(width)]
  score = sacrebleu.corpus_bleu([as_text(p) for p in predictions], streams)
  return {"bleu": float(score.score)}
