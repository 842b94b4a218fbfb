"""Blind baselines for the demo report: the best a predictor does without the image.

Why not a uniform guess: a uniform guess over the sixteen VQA answers scores
~6 %, but the question alone narrows the answer (a colour question has six
possible answers, a yes/no question two, a count question three), so a model
that learned only that would look "far above chance". Each baseline here is
fitted on the world's training split (the examples the model trains on),
predicts the validation examples the model is scored on, and is scored with the
task's own metric function (`tasks.demo.METRICS`), so the two numbers of a
report row compare like with like.

What each baseline sees (everything but the image):

  vqa               the question: the commonest training answer to the same
                    question text (else to the same question type, else overall)
  classify          nothing: the commonest training label (or a uniform guess's
                    expected accuracy, when higher on the evaluated examples)
  matching          the caption: nothing to gain from it (a false caption is the
                    caption of another generated scene), so as classify
  grounding         the text: among the training boxes of the same text and their
                    mean, the one at IoU >= 0.5 with most of them; for a text not
                    seen in training, the mean training box
  caption,
  grounded_caption  nothing: the commonest training caption
  detection         nothing: the commonest training object at its mean box
  sudoku            the puzzle: its blanks filled uniformly at random (the
                    expected solved rate, computed exactly)
  infilling         nothing: the commonest training sentence
  text_to_image,
  image_infilling   nothing: the commonest training picture (one of 24), judged
                    as generated pictures are (tasks/demo_judge.py)
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from ofa_jax.metrics import classification as cls_metrics
from ofa_jax.metrics import grounding as grounding_metrics
from ofa_jax.metrics import sudoku as sudoku_metrics
from tasks import demo
from tasks import demo_judge
from tasks import demo_world as world

# ---- fitting ---------------------------------------------------------------------
def majority(labels: Iterable[Any]) -> Any:
  """The commonest label; ties go to the smallest, so the result is deterministic."""
  counts = collections.Counter(labels)
  if not counts:
    raise ValueError("majority: no labels")
  return min(counts, key=lambda label: (-counts[label], label))


def majority_by_key(keys: Sequence[Hashable], labels: Sequence[Any]
                    ) -> dict[Hashable, Any]:
  """{key: the commonest label among the examples with that key}."""
  if len(keys) != len(labels):
    raise ValueError(f"majority_by_key: {len(keys)} keys but {len(labels)} labels")
  groups: dict[Hashable, list[Any]] = collections.defaultdict(list)
  for key, label in zip(keys, labels):
    groups[key].append(label)
  return {key: majority(group) for key, group in groups.items()}


def question_only_answers(train_questions: Sequence[str],
                          train_answers: Sequence[str],
                          questions: Sequence[str],
                          type_of: Callable[[str], str] = world.vqa_question_type
                          ) -> list[str]:
  """Per question, the commonest training answer to the same question text.

  A question never seen in training gets the commonest answer of its type
  (`type_of`), and an unseen type the commonest answer overall.
  """
  by_question = majority_by_key(train_questions, train_answers)
  by_type = majority_by_key([type_of(q) for q in train_questions], train_answers)
  overall = majority(train_answers)
  return [by_question[q] if q in by_question else by_type.get(type_of(q), overall)
          for q in questions]


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)] IoU of boxes (x0, y0, x1, y1); an inverted box has no area.

  The vectorized form of `grounding_metrics.box_iou`, to search among boxes.
  """
  a, b = np.asarray(a, np.float64)[:, None, :], np.asarray(b, np.float64)[None]
  area = lambda x: (np.maximum(x[..., 2] - x[..., 0], 0)  # noqa: E731
                    * np.maximum(x[..., 3] - x[..., 1], 0))
  inter = (np.maximum(np.minimum(a[..., 2], b[..., 2])
                      - np.maximum(a[..., 0], b[..., 0]), 0)
           * np.maximum(np.minimum(a[..., 3], b[..., 3])
                        - np.maximum(a[..., 1], b[..., 1]), 0))
  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def best_constant_box(boxes: Sequence[Sequence[float]]) -> list[float]:
  """The box at IoU >= 0.5 with most of `boxes`, among them and their mean.

  What Acc@0.5 rewards: the mean box can miss every box of a spread-out group
  while one of the group's own boxes still hits some.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if not len(boxes):
    raise ValueError("best_constant_box: no boxes")
  candidates = np.concatenate([boxes.mean(axis=0, keepdims=True), boxes])
  hits = (pairwise_iou(candidates, boxes) >= grounding_metrics.IOU_THRESHOLD
          ).sum(axis=1)
  return candidates[int(np.argmax(hits))].tolist()  # ties: the mean, then order


def text_only_boxes(train_texts: Sequence[str],
                    train_boxes: Sequence[Sequence[float]],
                    texts: Sequence[str]) -> list[list[float]]:
  """Per text, `best_constant_box` of the training boxes of the same text.

  A text never seen in training gets the mean training box.
  """
  groups: dict[str, list[Sequence[float]]] = collections.defaultdict(list)
  for text, box in zip(train_texts, train_boxes):
    groups[text].append(box)
  by_text = {text: best_constant_box(group) for text, group in groups.items()}
  mean = np.asarray(train_boxes, np.float64).reshape(-1, 4).mean(axis=0).tolist()
  return [by_text.get(text, mean) for text in texts]


# ---- scoring -------------------------------------------------------------------
def score(name: str, targets: Sequence[Any], predictions: Sequence[Any]
          ) -> dict[str, float]:
  """Every metric of the demo task `name`, as the evaluator computes them."""
  out: dict[str, float] = {}
  for fn in demo.METRICS[name]:
    out.update(fn(targets, predictions))
  return out


def vqa_by_type(questions: Sequence[str], targets: Sequence[Any],
                predictions: Sequence[Any]) -> dict[str, dict[str, float]]:
  """{question type: {"vqa_score": ..., "num_examples": ...}} (types present only)."""
  if not len(questions) == len(targets) == len(predictions):
    raise ValueError(f"vqa_by_type: {len(questions)} questions, {len(targets)} "
                     f"targets and {len(predictions)} predictions")
  by_type: dict[str, list[int]] = collections.defaultdict(list)
  for i, question in enumerate(questions):
    by_type[world.vqa_question_type(question)].append(i)
  return {kind: {**score("vqa", [targets[i] for i in rows],
                         [predictions[i] for i in rows]),
                 "num_examples": len(rows)}
          for kind, rows in sorted(by_type.items())}


def blind_baselines(n: int = 200, *, split: str = "validation",
                    train_examples: int = demo.DEFAULT_NUM_EXAMPLES["train"],
                    seed: int = 0, canvas: int = 64
                    ) -> dict[str, dict[str, Any]]:
  """{task short name: {metric: value}} of every demo task's blind baseline.

  Fitted on the first `train_examples` training examples (the registered count:
  those the model trained on), scored on the first `n` examples of `split` (the
  evaluated ones). VQA's entry also holds `by_type` ({question type: scores}).
  """
  if n <= 0 or train_examples <= 0:
    raise ValueError(f"blind_baselines: n ({n}) and train_examples "
                     f"({train_examples}) must be positive")

  def train(kind: str) -> dict[str, list]:
    return world.records(kind, train_examples, seed=seed, split="train",
                         canvas=canvas, images=False)

  def held_out(kind: str) -> dict[str, list]:
    return world.records(kind, n, seed=seed, split=split, canvas=canvas,
                         images=False)

  out: dict[str, dict[str, Any]] = {}
  fit, val = train("vqa"), held_out("vqa")
  answers = question_only_answers(fit["question"], fit["answer"], val["question"])
  out["vqa"] = {**score("vqa", val["answer"], answers),
                "by_type": vqa_by_type(val["question"], val["answer"], answers)}

  for name, classes in (("classify", world.SHAPES), ("matching", ("yes", "no"))):
    label = majority(train(name)["label"])
    targets = held_out(name)["label"]
    fitted = score(name, targets, [label] * len(targets))
    # On a small validation sample the training majority can score below a
    # uniform guess's expectation: the baseline is the better of the two.
    out[name] = {"accuracy": max(fitted["accuracy"],
                                 cls_metrics.chance_baseline(len(classes)))}

  fit, val = train("grounding"), held_out("grounding")
  boxes = text_only_boxes(fit["cap"], [b.tolist() for b in fit["region"]],
                          val["cap"])
  out["grounding"] = score("grounding", [b.tolist() for b in val["region"]], boxes)

  for name in ("caption", "grounded_caption", "infilling"):
    field = "sentence" if name == "infilling" else "cap"
    common = majority(train(name)[field])
    targets = held_out(name)[field]
    out[name] = score(name, targets, [common] * len(targets))

  fit, val = train("detection"), held_out("detection")
  label = majority(name.decode() for names in fit["labels"] for name in names)
  mean = np.concatenate([
      boxes[np.array([name.decode() == label for name in names], bool)]
      for boxes, names in zip(fit["boxes"], fit["labels"])]).mean(axis=0).tolist()
  targets = [[(box.tolist(), name.decode()) for box, name in zip(boxes, names)]
             for boxes, names in zip(val["boxes"], val["labels"])]
  out["detection"] = score("detection", targets, [[(mean, label)]] * len(targets))

  out["sudoku"] = {"solved": sudoku_metrics.chance_baseline(
      held_out("sudoku")["puzzle"])}

  # Both image tasks draw pictures: the blind guess is the commonest training
  # picture, drawn as the targets are (rendered, shrunk to the target size).
  picture = {world.picture_caption(*p): p for p in world.pictures()}
  judge = demo_judge.PictureJudge(canvas)

  def drawn(caption: str) -> np.ndarray:
    return demo_judge.resize(world.render(world.picture_scene(
        *picture[caption], canvas)), demo.TARGET_IMAGE_SIZE)

  common = drawn(majority(train("picture")["cap"]))
  targets = [drawn(c) for c in held_out("picture")["cap"]]
  guess = judge.scores(targets, [common] * len(targets))
  for name in demo.IMAGE_TARGET_TASKS:
    out[name] = dict(guess)
  return out


__all__: Sequence[str] = ("blind_baselines", "question_only_answers",
                          "text_only_boxes", "vqa_by_type")
