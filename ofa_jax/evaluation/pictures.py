"""Predictions that are pictures: rendering, references, PNG files, image metrics.

Why a module of its own: a task whose target is rendered from codes (a kind
with `code_targets`: VQ image codes) predicts a picture, not a text. Its value,
its reference, the files the evaluator and `python -m ofa_jax.infer` write and
the inputs of its metric functions all differ from a token task's, and every
one of them comes from the plan: the modality that chose the decoding
(`plan.decoding_modality`) turns rendered values into its pictures
(`Modality.postprocess`) and holds the reference in its primary target stream.
No modality is named here.

Files: `<out_dir>/<task>/<index>_pred.png` (the kept prediction), next to
`<index>_ref.png` (the reference target, when the example has one) and, with
several sampled candidates, `<index>_cand<k>.png`. JSONL rows record them
relative to `out_dir`, the folder of the JSONL file.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ofa_jax import results

PREDICTED = "pred"
REFERENCE = "ref"
CANDIDATE = "cand"


def owner_of(plan: Any) -> Any:
  """The modality whose rule chose the plan's decoding (it renders pictures)."""
  name = getattr(plan, "decoding_modality", None)
  if name is None:
    raise ValueError(f"task {getattr(plan, 'name', '?')!r}: its decoding "
                     f"({plan.decoding.kind!r}) was not chosen by a modality, "
                     "so nothing turns its rendered answers into pictures")
  return plan.processors[name]


def to_picture_fn(plan: Any) -> Callable[[np.ndarray, Mapping[str, Any]],
                                         np.ndarray]:
  """(one rendered value, example) -> uint8 picture, as the modality says."""
  owner = owner_of(plan)

  def to_picture(rendered: np.ndarray, example: Mapping[str, Any]) -> np.ndarray:
    picture = np.asarray(owner.postprocess(rendered, example))
    if not results.is_picture(picture):
      raise ValueError(f"task {plan.name!r}: {owner.name}.postprocess turned a "
                       f"rendered value {np.shape(rendered)} into "
                       f"{picture.dtype} {picture.shape}, not a uint8 "
                       "[H, W, 3] picture")
    return picture

  return to_picture


def reference(plan: Any, example: Mapping[str, Any]) -> Optional[np.ndarray]:
  """The example's target as a picture (None when its task features hold no
  target values, e.g. an offline cache that kept only the codes)."""
  owner = owner_of(plan)
  streams = tuple(getattr(owner, "target_streams", ()))
  if not streams or streams[0].name not in example:
    return None
  values = np.asarray(example[streams[0].name], np.float32)
  if values.size == 0 or values.ndim != streams[0].rank:
    return None
  return to_picture_fn(plan)(values, example)


def picture_file(out_dir: str, task: str, index: int, role: str) -> str:
  """`<out_dir>/<task>/<index>_<role>.png`."""
  return os.path.join(out_dir, task, f"{int(index)}_{role}.png")


def write_example(out_dir: str, task: str, index: int, choice: Any,
                  target: Optional[np.ndarray]) -> dict[str, Any]:
  """Writes one example's pictures; {"prediction", "target", "candidates"}
  paths relative to `out_dir` (target None without a reference)."""

  def put(role: str, picture: np.ndarray) -> str:
    path = picture_file(out_dir, task, index, role)
    results.write_png(path, picture)
    return os.path.relpath(path, out_dir)

  if choice.picture is None:
    raise ValueError(f"task {task!r}, example {index}: no rendered picture")
  out: dict[str, Any] = {"prediction": put(PREDICTED, choice.picture),
                         "target": None if target is None
                         else put(REFERENCE, target)}
  if choice.pictures is not None:
    out["candidates"] = [put(f"{CANDIDATE}{k}", p)
                         for k, p in enumerate(choice.pictures)]
  return out


def row_files(out_dir: Optional[str], plan: Any, index: int,
              example: Mapping[str, Any], choice: Any) -> dict[str, Any]:
  """A JSONL row's picture fields: `prediction` / `target` paths (written
  when `out_dir` is given, else None), with several candidates their paths
  and `candidate_scores` (the scorer's, else the decoder's)."""
  out: dict[str, Any] = {"prediction": None, "target": None}
  if out_dir:
    out = write_example(out_dir, plan.name, index, choice,
                        reference(plan, example))
  if choice.pictures is not None:
    out["candidate_scores"] = (choice.ranking if choice.ranking is not None
                               else choice.sample_scores)
  return out


def task_metrics(task: Any, examples: Iterable[tuple[int, Mapping[str, Any]]],
                 predictions: Mapping[int, Any],
                 scores: Optional[Mapping[int, float]]) -> dict[str, Any]:
  """`metrics` of a task's (index, task example) pairs and their `Choice`s.

  References and generated pictures both go through the task's
  postprocess_fn, as seqio passes decoded values to metric functions.
  """
  postprocess = task.postprocess_fn or (lambda x, **_: x)
  targets, generated, order = [], [], []
  for i, ex in examples:
    if i not in predictions:
      continue
    order.append(i)
    targets.append(postprocess(reference(task.plan, ex), example=ex,
                               is_target=True))
    generated.append(postprocess(predictions[i].picture, example=ex,
                                 is_target=False))
  aux = {"scores": np.asarray([predictions[i].score for i in order])}
  values = None if scores is None else np.asarray([scores[i] for i in order])
  return metrics(task, targets, generated, aux, values)


def metrics(task: Any, targets: Sequence[Any], predictions: Sequence[Any],
            aux: Mapping[str, Any], scores: Optional[np.ndarray]
            ) -> dict[str, Any]:
  """A picture task's metric functions on pictures, as seqio would call them.

  `targets` / `predictions` are the postprocessed references and generated
  pictures, in example order; `aux` the aux values of
  `(targets, predictions, aux_values)` functions; `scores` those of
  `(targets, scores)` functions. Metric objects given to the task directly
  (not functions) read token outputs and are refused.
  """
  if len(task.metric_objs) != len(task.metric_fns):
    raise ValueError(f"task {task.name!r}: its predictions are pictures, which "
                     "only metric functions (targets, predictions) receive; "
                     "give metric_fns instead of seqio metric objects")
  calls: list[tuple[Callable[..., Any], dict[str, Any]]] = []
  for fn in task.predict_metric_fns:
    calls.append((fn, {"targets": targets, "predictions": predictions}))
  for fn in task.predict_with_aux_metric_fns:
    calls.append((fn, {"targets": targets, "predictions": predictions,
                       "aux_values": aux}))
  for fn in task.score_metric_fns:
    if scores is None:
      raise ValueError(f"task {task.name!r}: score metric {fn!r} needs scores")
    calls.append((fn, {"targets": targets, "scores": scores}))
  out: dict[str, Any] = {}
  for fn, kwargs in calls:
    for k, v in dict(fn(**kwargs)).items():
      if k in out:
        raise ValueError(f"task {task.name!r}: two metrics named {k!r}")
      out[k] = v
  return out
