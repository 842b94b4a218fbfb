"""CIDEr for captions, through pycocoevalcap's scorer (CIDEr-D, as COCO reports).

The COCO toolkit tokenizes with the Java PTB tokenizer; we use the pure-Python
`common.words` split (lower case, punctuation removed) instead, so evaluation
needs no JVM. The scorer itself (n = 1..4, sigma = 6, IDF over the references of
the evaluated set) is pycocoevalcap's.
"""

from __future__ import annotations

from typing import Any, Sequence

from pycocoevalcap.cider.cider import Cider

from ofa_jax.metrics.common import as_references, as_text, check_pairs, words


def cider(targets: Sequence[Any], predictions: Sequence[Any]
          ) -> dict[str, float]:
  """Corpus CIDEr x 100 (the scale of the OFA / COCO tables).

  Args:
    targets: per example, a reference caption or a list of them.
    predictions: per example, the predicted caption.
  """
  targets, predictions = check_pairs(targets, predictions, "cider")
  refs = {i: [" ".join(words(r)) for r in as_references(t, f"cider: target {i}")]
          for i, t in enumerate(targets)}
  hyps = {i: [" ".join(words(as_text(p)))] for i, p in enumerate(predictions)}
  score, _ = Cider().compute_score(refs, hyps)
  return {"cider": 100.0 * float(score)}


def constant_caption_baseline(targets: Sequence[Any], caption: str
                              ) -> float:
  """CIDEr of answering `caption` for every example (e.g. the commonest one)."""
  return cider(targets, [caption] * len(list(targets)))["cider"]
