"""Per-input failures of batch inference: which input, and why.

Why this exists: at scale one bad input in a million (a corrupt PNG, a missing
file, a row without the instruction's field) must not cost the run. Inference
predicts every good input and returns, in the bad one's place, an
`InferenceError` naming it. An undecodable value is dropped inside the task's
tf.data pipeline (`data_stats`: dropped and counted, never zeros); the API
carries each input's number through the pipeline (`plan.source.ITEM_KEY`), so
the inputs that did not come out are known without re-running anything, and
only those are explained, each by its modality (`Modality.explain_invalid`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping, Optional

import tensorflow as tf

from ofa_jax import modalities
from ofa_jax.modalities.base import SlotContext


@dataclasses.dataclass(frozen=True)
class InferenceError:
  """The outcome of an input that could not be run: falsy, `.ok` is False.

  Attributes:
    index: the input's position in the data given to `inference` (or in the
      input file / folder listing, for `python -m ofa_jax.infer`).
    source: what names the input to a person: the path of its file when a
      slot reads one from a path, else `data[<index>]`.
    reason: why, specific enough to fix it ("IMAGE field 'img': not a
      JPEG/PNG/GIF/BMP image", "... image file '...' does not exist", ...).
  """

  index: int
  source: str
  reason: str
  ok: ClassVar[bool] = False

  def __bool__(self) -> bool:
    return False

  def __str__(self) -> str:
    return f"{self.source}: {self.reason}"

  def to_json(self) -> dict[str, Any]:
    """The error record of an output line (`python -m ofa_jax.infer`)."""
    return {"error": self.reason, "source": self.source, "index": self.index}


def source_of(row: Any, index: int, template: Any) -> str:
  """The path of the row's first input slot that reads files (when given as a
  path), else `data[<index>]`."""
  if isinstance(row, Mapping):
    for alt in template.alternatives:
      for slot in alt.source_slots():
        value = row.get(slot.name) if slot.name is not None else None
        if isinstance(value, (str, os.PathLike)) and modalities.file_reader_of(
            str(getattr(slot.modality, "value", slot.modality))):
          return os.fspath(value)
  return f"data[{index}]"


def from_exception(error: Exception, row: Any, index: int,
                   template: Any) -> InferenceError:
  """The error of an input refused before preprocessing (its message)."""
  reason = str(error)
  if isinstance(error, FileNotFoundError) and not reason:
    reason = "file not found"
  prefix = "inference: "
  if reason.startswith(prefix):
    reason = reason[len(prefix):]
  return InferenceError(index, source_of(row, index, template), reason)


def explain_dropped(plan: Any, example: Mapping[str, tf.Tensor]) -> str:
  """Why the task's pipeline dropped `example` (its source tensors).

  Each dense slot's modality is asked eagerly (`explain_invalid`); when none
  explains it, the task's skip counts say what kinds of drop happened.
  """
  reasons = []
  seen = set()
  for alt in plan.template.alternatives:
    for slot in alt.slots():
      if (slot.name is None or slot.name in seen or slot.is_token_based
          or slot.name not in example):
        continue
      seen.add(slot.name)
      modality = plan.processors[slot.modality]
      ctx = SlotContext(task=plan.name, slot_name=slot.name,
                        attrs=dict(slot.attrs), vocab=plan.vocab,
                        options=dict(plan.options), is_training=False)
      why = modality.explain_invalid(example[slot.name], ctx)
      if why:
        reasons.append(f"undecodable {modality.name} in field {slot.name!r}: "
                       f"{why}")
  if reasons:
    return "; ".join(reasons)
  counts = {k: v for k, v in plan.skip_counts().items()
            if v and k.startswith("invalid_")}
  return ("could not be preprocessed (dropped by the task's pipeline; its "
          f"drops so far: {counts})")


def too_long(num_tokens: int, limit: int) -> str:
  """The reason of an input longer than the model's encoder takes."""
  return (f"its input has {num_tokens} tokens, more than the model's "
          f"max_source_positions={limit}")
