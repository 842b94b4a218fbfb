"""Refuse a task whose streams the model cannot consume, before any work.

Why: a dense stream is preprocessed, padded and batched whatever the model does
with it. Without an encoder adapter for an input stream, or a head for a dense
target, the model would silently ignore the stream (and a dense-target task would
train on zero loss tokens). `register_task` checks an instruction against a model
config (or, without one, against the model registry), and the trainer checks every
task of its mixture against the model it trains.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from ofa_jax import instructions
from ofa_jax import modalities


def _pieces(template: instructions.Template
            ) -> Iterable[tuple[Any, str, Optional[str]]]:
  """(slot, "encoder adapter" | "target head", piece name) of every dense slot."""
  seen = set()
  for alt in template.alternatives:
    for slot in alt.slots():
      if slot.is_token_based or (slot.modality, slot.side) in seen:
        continue
      seen.add((slot.modality, slot.side))
      modality = modalities.get(slot.modality)
      if slot.is_source:
        yield slot, "encoder adapter", modality.adapter
      else:
        yield slot, "target head", modality.head


def missing_pieces(template: instructions.Template,
                   model_config: Any = None,
                   options: Optional[dict] = None) -> list[str]:
  """Why each dense slot cannot reach the model ([] when all can)."""
  from ofa_jax.model import registry as model_registry  # pylint: disable=g-import-not-at-top
  problems = []
  for slot, kind, piece in _pieces(template):
    where = f"slot {slot.to_string()}"
    if piece is None:
      problems.append(f"{where}: the {slot.modality} modality names no {kind}, "
                      f"so the model cannot consume it")
      continue
    if model_config is not None:
      field = ("encoder_adapters" if kind == "encoder adapter"
               else "target_heads")
      have = tuple(getattr(model_config, field, ()))
      if piece not in have:
        problems.append(f"{where} needs the {kind} {piece!r}, which the model "
                        f"config does not have ({field}={have})")
        continue
      problems.extend(modalities.get(slot.modality).model_problems(
          slot, dict(options or {}), model_config))
      continue
    known = (model_registry.adapters() if kind == "encoder adapter"
             else model_registry.heads())
    if piece not in known:
      problems.append(f"{where} needs the {kind} {piece!r}, which is not in the "
                      f"model registry (ofa_jax/model/registry.py; known: "
                      f"{sorted(known)}): {slot.modality} is data-side only")
  return problems


def check_consumable(task: str, template: instructions.Template,
                     model_config: Any = None,
                     options: Optional[dict] = None) -> None:
  """Raises ValueError naming the task, the slots and the missing pieces."""
  problems = missing_pieces(template, model_config, options)
  if problems:
    raise ValueError(
        f"task {task!r} cannot be trained: " + "; ".join(problems) +
        ". Register it with data_only=True to inspect its data only "
        "(tools/inspect_task.py).")


def check_task_for_model(task: Any, model_config: Any) -> None:
  """The trainer's check of one task of its mixture against the model's config.

  A task registered with `data_only=True` is refused as such; a task that is not
  an ofa_jax task (no `.plan`) is left to the feature converter's own checks.
  """
  plan = getattr(task, "plan", None)
  if plan is None:
    return
  name = getattr(task, "name", plan.name)
  if plan.data_only:
    problems = missing_pieces(plan.template, model_config)
    raise ValueError(f"task {name!r} was registered with data_only=True (for "
                     "inspection) and cannot be trained" +
                     (": " + "; ".join(problems) if problems else ""))
  check_consumable(name, plan.template, model_config,
                   dict(getattr(plan, "options", None) or {}))


def check_mixture_for_model(mixture_or_task_name: str, model_config: Any) -> None:
  """`check_task_for_model` on every task of a registered mixture or task.

  No-op when the name is not registered (seqio reports that itself) or when
  there is no model config to check against (a model that is not an OFAModel).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  if model_config is None:
    return
  try:
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
  except ValueError:
    return
  for task in getattr(provider, "tasks", None) or [provider]:
    check_task_for_model(task, model_config)


def check_cacheable(task: str, template: instructions.Template,
                    options: dict) -> None:
  """An `offline_cache` task is built before seqio knows `sequence_length`, so
  the options a modality would take from a length key must be given."""
  missing = []
  for alt in template.alternatives:
    for slot in alt.slots():
      if slot.is_token_based:
        continue
      modality = modalities.get(slot.modality)
      streams = {s.name for s in (modality.input_streams if slot.is_source
                                  else modality.target_streams)}
      for key, names in modality.length_options.items():
        if key not in streams:
          continue
        if not any(n in options for n in names) and names[0] not in missing:
          missing.append(names[0])
  if missing:
    raise ValueError(
        f"task {task!r}: offline_cache=True builds examples before the cache, "
        f"where seqio gives no sequence_length; set the option(s) {missing} "
        "explicitly")
