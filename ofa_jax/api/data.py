"""Python dicts of fields -> the model features of a one-off task (for `api.py`).

Why a one-off registered task: the instruction is compiled by `plan.register_task`
exactly as at training time, so preprocessing, the feature layout, the forced
prompt and postprocessing are the training ones. The task lives in seqio's
registry only while its examples are built, under a private name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from ofa_jax import features as F
from ofa_jax import instructions
from ofa_jax import modalities
from ofa_jax.api import failures as failures_lib
from ofa_jax.results import Result
_BUCKET = 16  # token lengths are rounded up to a multiple: fewer recompilations


@dataclasses.dataclass
class Prepared:
  """The examples of one inference call, ready for the model."""

  plan: Any
  examples: list[dict[str, np.ndarray]]  # task features (for postprocessing)
  model_rows: list[dict[str, np.ndarray]]  # model features, static shapes
  # Each example's first geometry-giving input (an image) as given, or None.
  images: list[Any]
  postprocess: Callable[..., Any]
  # The position in the given rows of each example (rows that failed are not
  # examples), and the failures, by position.
  indices: list[int] = dataclasses.field(default_factory=list)
  failures: list[Any] = dataclasses.field(default_factory=list)


def task_name_of(instruction: str) -> str:
  """A private seqio task name for an instruction (stable within a process)."""
  digest = hashlib.sha1(instruction.encode("utf-8")).hexdigest()[:12]
  return f"_ofa_api_{digest}_{os.getpid()}"


def _tensor(value: Any, modality: str, where: str) -> tf.Tensor:
  """A user's Python value -> a source tensor, as the slot's modality converts it."""
  return modalities.get(modality).to_tensor(value, where)


def _placeholder(slot: Any, grouped: bool, labels: Optional[Sequence[str]]
                 ) -> tf.Tensor:
  """The value of a target field the user cannot give (it is what we predict)."""
  return modalities.get(slot.modality).placeholder(grouped, labels)


def _target_fields(template: instructions.Template
                   ) -> dict[str, tuple[Any, bool, bool]]:
  """{field: (slot, in a group, is a forced prompt)} of the target side."""
  out = {}
  for alt in template.alternatives:
    for element in alt.target:
      if isinstance(element, instructions.Slot):
        slots, grouped = (element,), False
      elif isinstance(element, (instructions.InterleavedGroup,
                                instructions.ContrastiveChoice)):
        slots = element.slots
        grouped = isinstance(element, instructions.InterleavedGroup)
      else:
        continue
      for s in slots:
        if s.name is not None:
          out[s.name] = (s, grouped, s.has("no_loss"))
  return out


def _row_tensors(template: instructions.Template, row: Any, where: str,
                 labels: Optional[Sequence[str]]) -> dict[str, tf.Tensor]:
  """One row's source tensors; raises (naming `where`) on a bad field."""
  if not isinstance(row, Mapping):
    raise TypeError(f"inference: {where} is a {type(row).__name__}, expected a "
                    "dict of fields")
  targets = _target_fields(template)
  source = {s.name: s for alt in template.alternatives for s in alt.source_slots()
            if s.name is not None}
  ex = {}
  for name, slot in source.items():
    if name not in row:
      raise ValueError(f"inference: {where} has no field {name!r} for slot "
                       f"{slot.to_string()}; its fields are {sorted(row)}")
    ex[name] = _tensor(row[name], slot.modality, f"{where}[{name!r}]")
  for name, (slot, grouped, prompt) in targets.items():
    if name in ex:
      continue
    if name in row:
      ex[name] = _tensor(row[name], slot.modality, f"{where}[{name!r}]")
    elif prompt:
      raise ValueError(f"inference: {where} has no field {name!r}: the "
                       f"no_loss slot {slot.to_string()} is the decoder's prompt")
    else:
      ex[name] = _placeholder(slot, grouped, labels)
  return ex


def _dataset_of(examples: Sequence[Mapping[str, tf.Tensor]]) -> tf.data.Dataset:
  """One dataset of the examples, in order.

  Runs of examples whose tensors agree in dtype and shape (e.g. every image
  given as a path) become one `from_tensor_slices` each, so a long list is a
  few datasets concatenated, not one per example.
  """
  def signature(ex):
    return tuple((k, v.dtype, tuple(v.shape)) for k, v in sorted(ex.items()))

  runs: list[list[Mapping[str, tf.Tensor]]] = []
  for ex in examples:
    if runs and signature(runs[-1][0]) == signature(ex):
      runs[-1].append(ex)
    else:
      runs.append([ex])
  ds = None
  for run in runs:
    part = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([ex[k] for ex in run]) for k in run[0]})
    ds = part if ds is None else ds.concatenate(part)
  return ds


def _bucket(n: int, cap: Optional[int] = None) -> int:
  n = max(_BUCKET, -(-n // _BUCKET) * _BUCKET)
  return n if cap is None else min(n, max(cap, 1))


def feature_lengths(examples: Sequence[Mapping[str, np.ndarray]],
                    max_source_positions: Optional[int] = None) -> dict[str, int]:
  """Static lengths covering every example (tokens bucketed, dense exact)."""
  lengths = {}
  longest_in = max(len(ex[F.INPUTS]) for ex in examples)
  if max_source_positions is not None and longest_in > max_source_positions:
    raise ValueError(f"inference: an input has {longest_in} tokens, more than the "
                     f"model's max_source_positions={max_source_positions}")
  lengths[F.INPUTS] = _bucket(longest_in, max_source_positions)
  lengths[F.TARGETS] = _bucket(max(len(ex[F.TARGETS]) for ex in examples))
  for key in modalities.length_keys():
    if key not in lengths:
      lengths[key] = max(int(np.shape(ex[key])[0]) for ex in examples)
  return lengths


ERRORS = ("raise", "record")


def prepare(instruction: str, rows: Sequence[Any], *,
            vocabulary: Any, options: Mapping[str, Any],
            closed_set: Optional[Sequence[str]], converter: seqio.FeatureConverter,
            max_source_positions: Optional[int] = None,
            model_config: Any = None, first_index: int = 0,
            errors: str = "raise") -> Prepared:
  """Compiles the instruction, preprocesses the rows, converts them to features.

  With `model_config`, the one-off task is checked against the model as a
  training task is (e.g. a target image grid the model's decoder and VQGAN
  head were not built for is refused, naming both).

  A bad row (not a dict, a missing field or file, an undecodable value, an
  input longer than `max_source_positions`) raises with `errors="raise"`;
  with `errors="record"` it becomes an `InferenceError` in `failures` and the
  other rows are prepared as if it were not there. Rows are numbered from
  `first_index` in messages (a chunk of a longer list).
  """
  from ofa_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from ofa_jax.plan import source as source_lib  # pylint: disable=g-import-not-at-top
  if errors not in ERRORS:
    raise ValueError(f"inference: errors must be one of {ERRORS}, got {errors!r}")
  template = instructions.parse_template(instruction)
  tensors: dict[int, dict[str, tf.Tensor]] = {}
  failures: list[failures_lib.InferenceError] = []
  for i, row in enumerate(rows):
    try:
      tensors[i] = _row_tensors(template, row, f"data[{first_index + i}]",
                                closed_set)
    except (TypeError, ValueError, FileNotFoundError) as e:
      if errors == "raise":
        raise
      failures.append(failures_lib.from_exception(e, row, first_index + i,
                                                  template))
  opts = dict(options)
  if closed_set is not None:
    opts["closed_set"] = list(closed_set)
  name = task_name_of(instruction)
  # Every row refused: the task is still registered (the plan's checks run
  # and its decoding is known), its dataset is never read.
  ds = _dataset_of([{**ex, source_lib.ITEM_KEY: tf.constant(i, tf.int64)}
                    for i, ex in tensors.items()]) if tensors else None
  source = seqio.FunctionDataSource(
      dataset_fn=lambda split, shuffle_files, seed=None: ds, splits=("infer",))
  task = plan_lib.register_task(name, instruction, source, replace=True,
                                vocabulary=vocabulary, train_splits=(),
                                shuffle_buffer_size=None,
                                model_config=model_config, **opts)
  examples: list[dict[str, np.ndarray]] = []
  model_rows: list[dict[str, np.ndarray]] = []
  kept: list[int] = []
  try:
    if tensors:
      task_ds = task.get_dataset(sequence_length=None, split="infer",
                                 shuffle=False, num_epochs=1, seed=0).cache()
      came_out = list(task_ds.as_numpy_iterator())
      for i in sorted(set(tensors) - {int(ex[source_lib.ITEM_KEY])
                                      for ex in came_out}):
        reason = failures_lib.explain_dropped(task.plan, tensors[i])
        failures.append(failures_lib.InferenceError(
            first_index + i,
            failures_lib.source_of(rows[i], first_index + i, template), reason))
      for ex in came_out:
        i = int(ex.pop(source_lib.ITEM_KEY))
        n = len(ex[F.INPUTS])
        if max_source_positions is not None and n > max_source_positions:
          failures.append(failures_lib.InferenceError(
              first_index + i,
              failures_lib.source_of(rows[i], first_index + i, template),
              failures_lib.too_long(n, max_source_positions)))
          continue
        kept.append(i)
        examples.append(ex)
      if errors == "raise" and failures:
        first = min(failures, key=lambda f: f.index)
        raise ValueError(f"inference: data[{first.index}] ({first.source}): "
                         f"{first.reason}")
      if examples:
        lengths = feature_lengths(examples, max_source_positions)
        wanted = tf.constant(kept, tf.int64)
        model_ds = task_ds.filter(lambda ex: tf.reduce_any(
            tf.equal(ex[source_lib.ITEM_KEY], wanted))).map(
                lambda ex: {k: v for k, v in ex.items()
                            if k != source_lib.ITEM_KEY})
        model_rows = list(converter(model_ds, lengths).as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  image_fields = [s.name for s in template.alternatives[0].source_slots()
                  if s.name is not None and getattr(
                      modalities.get(s.modality), "provides_geometry", False)]
  images = [rows[i].get(image_fields[0]) if image_fields else None
            for i in kept]
  return Prepared(plan=task.plan, examples=examples, model_rows=model_rows,
                  images=images, postprocess=task.postprocess_fn,
                  indices=kept,
                  failures=sorted(failures, key=lambda f: f.index))


def to_result(prepared: Prepared, i: int, tokens: np.ndarray, score: float,
              kind: str, *, choice: Any = None) -> Result:
  """The typed result of example `i` from its decoded tokens.

  `choice` (a `decoding.rerank.Choice`) carries the rendered picture of a
  target rendered from codes, which is then the value postprocessed (the text
  stays the decoded codes), and its candidates when several were sampled.
  """
  from ofa_jax.decoding import prompts  # pylint: disable=g-import-not-at-top
  vocab = prepared.plan.vocab
  ex = prepared.examples[i]
  decoded = vocab.decode([int(t) for t in np.asarray(tokens).reshape(-1)])
  text = prompts.answer_text(decoded, ex, vocab)
  picture = getattr(choice, "picture", None)
  value = prepared.postprocess(decoded if picture is None else picture,
                               example=ex, is_target=False)
  candidates = candidate_scores = None
  if choice is not None and choice.pictures is not None:
    candidates = list(choice.pictures)
    candidate_scores = (choice.ranking if choice.ranking is not None
                        else choice.sample_scores)
  return Result.from_prediction(text=text, value=value, score=score, kind=kind,
                                tokens=tokens, input_image=prepared.images[i],
                                candidates=candidates,
                                candidate_scores=candidate_scores)
