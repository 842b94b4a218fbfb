"""Choosing among n generated candidates: render them all, score them, keep the best.

Why a step of its own: a sampled picture is one draw of many, and OFA's text-to-
image generation samples several per prompt and keeps the one a separate judge
(CLIP: how well the picture matches the caption) ranks first. The judge is not
part of the generalist and needs nothing from how the candidates were decoded,
so it is a plain callable here, a *scorer*:

    scorer(example_inputs, images) -> scores

* `example_inputs`: a dict about one example (`example_inputs` builds it):
  `FEATURES` its model features (numpy, no batch axis), `FIELDS` the Python
  values the caller gave (the Python API: the instruction's fields, e.g. the
  caption; {} where they are not known, as in the evaluator), `INPUT_TEXT` the
  encoder input as text (what the instruction asked);
* `images`: uint8 [n, H, W, 3], the n rendered candidates;
* returns n floats, higher is better; the candidate with the highest score is
  kept (the first of equal ones).

Without a scorer the first sample is kept: exactly what decoding one sample
gives, so asking for n candidates never changes the answer unless something
ranks them.

A JAX CLIP plugs in through `ClipScorer`: give it a function that embeds
pictures and one that embeds an example's text, and it scores each candidate by
cosine similarity (CLIP's own ranking rule). No CLIP is shipped: its weights
cannot be downloaded here.

The device side (sampling the n candidates as `spec.replace(beam_size=n,
return_all=True)`, rendering them in the same compiled program) is
`evaluation.runner.BatchRunner.predict`; `choose_rows` is the host side.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

# The keys of a scorer's `example_inputs`.
FEATURES = "features"
FIELDS = "fields"
INPUT_TEXT = "input_text"

Scorer = Callable[[Mapping[str, Any], np.ndarray], Any]


def example_inputs(features: Mapping[str, Any], *,
                   fields: Optional[Mapping[str, Any]] = None,
                   input_text: str = "") -> dict[str, Any]:
  """The dict a scorer receives about one example (see the module doc)."""
  return {FEATURES: dict(features), FIELDS: dict(fields or {}),
          INPUT_TEXT: str(input_text)}


class ClipScorer:
  """Ranks pictures by the cosine similarity of their embedding to the text's.

  Args:
    embed_images: uint8 [n, H, W, 3] -> float [n, D] (e.g. a jitted JAX CLIP
      image tower with its own resizing and normalization).
    embed_text: str -> float [D] (the CLIP text tower with its tokenizer).
    text_of: which text of the example is embedded; default: the field named
      `text_field` of `FIELDS` when given (the caption a user passed), else
      the encoder input text (`INPUT_TEXT`).
    text_field: see `text_of`.
  """

  def __init__(self, embed_images: Callable[[np.ndarray], Any],
               embed_text: Callable[[str], Any], *,
               text_of: Optional[Callable[[Mapping[str, Any]], str]] = None,
               text_field: Optional[str] = None):
    self.embed_images = embed_images
    self.embed_text = embed_text
    self.text_field = text_field
    self._text_of = text_of

  def text(self, example: Mapping[str, Any]) -> str:
    if self._text_of is not None:
      return str(self._text_of(example))
    fields = example.get(FIELDS) or {}
    if self.text_field is not None:
      if self.text_field not in fields:
        raise ValueError(f"ClipScorer: the example has no field "
                         f"{self.text_field!r}; its fields are {sorted(fields)}")
      return str(fields[self.text_field])
    return str(example.get(INPUT_TEXT, ""))

  def __call__(self, example: Mapping[str, Any], images: np.ndarray
               ) -> np.ndarray:
    pictures = np.asarray(self.embed_images(images), np.float64)
    text = np.asarray(self.embed_text(self.text(example)), np.float64).reshape(-1)
    if pictures.ndim != 2 or pictures.shape[1] != text.shape[0]:
      raise ValueError(f"ClipScorer: image embeddings {pictures.shape} and the "
                       f"text embedding {text.shape} do not match ([n, D], [D])")
    pictures = pictures / np.maximum(
        np.linalg.norm(pictures, axis=1, keepdims=True), 1e-12)
    text = text / max(float(np.linalg.norm(text)), 1e-12)
    return pictures @ text


class Renders(Protocol):
  """What `choose_rows` reads of `evaluation.runner.BatchPrediction`."""

  tokens: np.ndarray
  scores: np.ndarray
  rendered: Optional[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Choice:
  """One example's prediction after the choice among its candidates.

  Attributes:
    tokens: the chosen candidate's tokens [L] (prompt, answer, `</s>`, pad).
    score: the decoder's log-probability of the chosen candidate.
    index: which candidate was chosen (0 with one candidate or no scorer).
    picture: the chosen candidate rendered, uint8 [H, W, 3] (None for targets
      that are not rendered).
    pictures: every candidate rendered, uint8 [n, H, W, 3] (None with one).
    sample_scores: the decoder's log-probability of each candidate [n] (None
      with one).
    ranking: the scorer's score of each candidate [n] (None without a scorer).
  """

  tokens: np.ndarray
  score: float
  index: int = 0
  picture: Optional[np.ndarray] = None
  pictures: Optional[np.ndarray] = None
  sample_scores: Optional[np.ndarray] = None
  ranking: Optional[np.ndarray] = None


def score_candidates(scorer: Scorer, example: Mapping[str, Any],
                     images: np.ndarray) -> np.ndarray:
  """The scorer's scores of `images` [n, ...] as float64 [n], checked."""
  raw = scorer(example, images)
  scores = np.asarray(raw, np.float64).reshape(-1) if raw is not None else None
  n = int(np.shape(images)[0])
  if scores is None or scores.shape != (n,):
    got = None if scores is None else tuple(np.shape(raw))
    raise ValueError(f"scorer {getattr(scorer, '__name__', scorer)!r} returned "
                     f"scores of shape {got} for {n} candidates; expected [{n}]")
  if np.isnan(scores).any():
    raise ValueError(f"scorer {getattr(scorer, '__name__', scorer)!r} returned "
                     f"NaN scores: {scores.tolist()}")
  return scores


def best_index(scores: Optional[np.ndarray]) -> int:
  """The highest score's index (the first of equal ones); 0 without scores."""
  return 0 if scores is None else int(np.argmax(scores))


def choose_rows(prediction: Renders, num_rows: int, *,
                to_picture: Optional[Callable[[np.ndarray, Mapping[str, Any]],
                                              np.ndarray]] = None,
                scorer: Optional[Scorer] = None,
                examples: Optional[Callable[[int], Mapping[str, Any]]] = None
                ) -> list[Choice]:
  """The `Choice` of each of the first `num_rows` rows of a decoded batch.

  Args:
    prediction: tokens [B, L] or, with several candidates, [B, K, L]; scores
      [B] / [B, K]; rendered values [B, ...] / [B, K, ...] or None.
    num_rows: the real rows (the rest is padding).
    to_picture: (one rendered value, example_inputs) -> uint8 picture (the
      target modality's postprocess); needed when `prediction.rendered` is set.
    scorer: ranks the candidates (see the module doc); None keeps the first.
    examples: row index -> the scorer's `example_inputs` (needed with a scorer).
  """
  tokens = np.asarray(prediction.tokens)
  scores = np.asarray(prediction.scores)
  rendered = prediction.rendered
  several = tokens.ndim == 3
  if scorer is not None and not several:
    raise ValueError("a scorer ranks several candidates per example; decode "
                     "them with spec.replace(beam_size=n, return_all=True)")
  if scorer is not None and rendered is None:
    raise ValueError("a scorer ranks rendered candidates, and this decoding "
                     "renders nothing (its kind has no code targets)")
  if scorer is not None and examples is None:
    raise ValueError("choose_rows: a scorer needs examples= (row -> its inputs)")
  if rendered is not None and to_picture is None:
    raise ValueError("choose_rows: rendered values need to_picture=")
  out = []
  for row in range(num_rows):
    example = examples(row) if examples is not None else {}
    if not several:
      picture = (None if rendered is None
                 else to_picture(np.asarray(rendered[row]), example))
      out.append(Choice(tokens=tokens[row], score=float(scores[row]),
                        picture=picture))
      continue
    pictures = None
    if rendered is not None:
      pictures = np.stack([to_picture(np.asarray(r), example)
                           for r in rendered[row]])
    ranking = (score_candidates(scorer, example, pictures)
               if scorer is not None else None)
    k = best_index(ranking)
    out.append(Choice(
        tokens=tokens[row, k], score=float(scores[row, k]), index=k,
        picture=None if pictures is None else pictures[k], pictures=pictures,
        sample_scores=np.asarray(scores[row], np.float64), ranking=ranking))
  return out


def candidates_spec(spec: Any, num_candidates: int) -> Any:
  """`spec` decoding `num_candidates` samples per example, all returned.

  Only kinds whose targets are rendered (`DecodingKind.code_targets`) are
  ranked this way; one candidate leaves the spec as it is.
  """
  n = int(num_candidates)
  if n < 1:
    raise ValueError(f"num_candidates={num_candidates} must be >= 1")
  if n == 1:
    return spec
  if not spec.decoding_kind.code_targets:
    raise ValueError(f"num_candidates={n}: candidates are ranked for rendered "
                     f"targets (a kind with code targets); the target decodes "
                     f"as {spec.kind!r}")
  return spec.replace(beam_size=n, return_all=True)


def check_scorer(scorer: Optional[Scorer], num_candidates: int) -> None:
  """Raises when a scorer is given without candidates to rank."""
  if scorer is None:
    return
  if not callable(scorer):
    raise ValueError(f"scorer must be a callable (example_inputs, images) -> "
                     f"scores, got {type(scorer).__name__}")
  if int(num_candidates) < 2:
    raise ValueError(f"a scorer ranks several candidates: set num_candidates "
                     f"> 1 (got {num_candidates})")


__all__ = ["ClipScorer", "Choice", "FEATURES", "FIELDS", "INPUT_TEXT", "Scorer",
           "best_index", "candidates_spec", "check_scorer", "choose_rows",
           "example_inputs", "score_candidates"]
