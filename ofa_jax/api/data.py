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


def _rows_dataset(template: instructions.Template,
                  rows: Sequence[Mapping[str, Any]],
                  labels: Optional[Sequence[str]]) -> tf.data.Dataset:
  targets = _target_fields(template)
  source = {s.name: s for alt in template.alternatives for s in alt.source_slots()
            if s.name is not None}
  datasets = []
  for i, row in enumerate(rows):
    ex = {}
    for name, slot in source.items():
      if name not in row:
        raise ValueError(f"inference: data[{i}] has no field {name!r} for slot "
                         f"{slot.to_string()}; its fields are {sorted(row)}")
      ex[name] = _tensor(row[name], slot.modality, f"data[{i}][{name!r}]")
    for name, (slot, grouped, prompt) in targets.items():
      if name in ex:
        continue
      if name in row:
        ex[name] = _tensor(row[name], slot.modality, f"data[{i}][{name!r}]")
      elif prompt:
        raise ValueError(f"inference: data[{i}] has no field {name!r}: the "
                         f"no_loss slot {slot.to_string()} is the decoder's prompt")
      else:
        ex[name] = _placeholder(slot, grouped, labels)
    datasets.append(tf.data.Dataset.from_tensors(ex))
  ds = datasets[0]
  for other in datasets[1:]:
    ds = ds.concatenate(other)
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


def prepare(instruction: str, rows: Sequence[Mapping[str, Any]], *,
            vocabulary: Any, options: Mapping[str, Any],
            closed_set: Optional[Sequence[str]], converter: seqio.FeatureConverter,
            max_source_positions: Optional[int] = None,
            model_config: Any = None) -> Prepared:
  """Compiles the instruction, preprocesses the rows, converts them to features.

  With `model_config`, the one-off task is checked against the model as a
  training task is (e.g. a target image grid the model's decoder and VQGAN
  head were not built for is refused, naming both).
  """
  from ofa_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  template = instructions.parse_template(instruction)
  ds = _rows_dataset(template, rows, closed_set)
  opts = dict(options)
  if closed_set is not None:
    opts["closed_set"] = list(closed_set)
  name = task_name_of(instruction)
  source = seqio.FunctionDataSource(
      dataset_fn=lambda split, shuffle_files, seed=None: ds, splits=("infer",))
  task = plan_lib.register_task(name, instruction, source, replace=True,
                                vocabulary=vocabulary, train_splits=(),
                                shuffle_buffer_size=None,
                                model_config=model_config, **opts)
  try:
    task_ds = task.get_dataset(sequence_length=None, split="infer", shuffle=False,
                               num_epochs=1, seed=0).cache()
    examples = list(task_ds.as_numpy_iterator())
    if len(examples) != len(rows):
      raise ValueError(
          f"inference: {len(rows) - len(examples)} of {len(rows)} examples could "
          f"not be preprocessed (undecodable input): {task.plan.skip_counts()}")
    lengths = feature_lengths(examples, max_source_positions)
    model_rows = list(converter(task_ds, lengths).as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  image_fields = [s.name for s in template.alternatives[0].source_slots()
                  if s.name is not None and getattr(
                      modalities.get(s.modality), "provides_geometry", False)]
  images = [row.get(image_fields[0]) if image_fields else None for row in rows]
  return Prepared(plan=task.plan, examples=examples, model_rows=model_rows,
                  images=images, postprocess=task.postprocess_fn)


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
