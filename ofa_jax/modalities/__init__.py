"""The modality registry: one line per modality, each one object in its own file.

Why a registry of objects: everything that depends on what a slot type is (the
parser's attributes, the feature layout, preprocessing, value conversion,
postprocessing, decoding, the model pieces) is asked of the slot type's object,
so no other module names a particular modality. The built-in table is immutable;
a modality from outside the package (a plugin, a test) is added with `register`
and dropped with `remove`, as seqio's registries do. Files are imported on first
use, so a process that never touches audio never imports the audio code.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Iterable, Mapping, Optional

# Slot type -> "module:OBJECT" (module relative to this package, or absolute).
_BUILTIN: Mapping[str, str] = types.MappingProxyType({
    "TEXT": "text:TEXT",
    "IMAGE": "image:IMAGE",
    "BOX": "box:BOX",
    "AUDIO": "audio:AUDIO",
    "PHONE": "phone:PHONE",
    "VIDEO": "video:VIDEO",
    "MOTION": "motion:MOTION",
    "STRUCT": "struct:STRUCT",
    "CATEGORY": "category:CATEGORY",
})


class _Extra:
  """Modalities registered from outside the package (seqio-style registry)."""

  _paths: dict[str, str] = {}


def register(name: str, path: str) -> None:
  """Adds the modality `name` whose object is at "package.module:OBJECT"."""
  if not name or not name.isupper() or not name.replace("_", "").isalnum():
    raise ValueError(f"modality name {name!r} must be upper case letters, digits "
                     "and '_' (it is written as a slot type: [NAME:field])")
  if name in _BUILTIN or name in _Extra._paths:
    raise ValueError(f"modality {name!r} is already registered")
  if ":" not in path:
    raise ValueError(f"modality {name!r}: expected 'package.module:OBJECT', got "
                     f"{path!r}")
  _Extra._paths[name] = path


def remove(name: str) -> None:
  """Drops a modality added with `register` (built-in ones cannot be removed)."""
  if name in _BUILTIN:
    raise ValueError(f"modality {name!r} is built in and cannot be removed")
  _Extra._paths.pop(name, None)


def names() -> tuple[str, ...]:
  """Every registered slot type, built-in ones first."""
  return tuple(_BUILTIN) + tuple(_Extra._paths)


def is_registered(name: str) -> bool:
  return name in _BUILTIN or name in _Extra._paths


def get(name: str) -> Any:
  """The modality object of a slot type (importing its file on first use)."""
  path = _BUILTIN.get(name) or _Extra._paths.get(name)
  if path is None:
    raise ValueError(f"unknown modality {name!r}; registered: {list(names())}")
  module_name, _, attr = path.partition(":")
  if name in _BUILTIN:
    module_name = f"{__name__}.{module_name}"
  try:
    obj = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"cannot load modality {name!r} from {path!r}: {e}") from e
  if getattr(obj, "name", None) != name:
    raise ValueError(f"modality object at {path!r} is named "
                     f"{getattr(obj, 'name', None)!r}, registered as {name!r}")
  return obj


def get_processor(name: str) -> Any:
  """The modality object (the former per-slot-type processor)."""
  return get(str(name))


def all_modalities() -> tuple[Any, ...]:
  return tuple(get(n) for n in names())


def dense_modalities() -> tuple[Any, ...]:
  """The registered modalities with streams of their own, in registry order."""
  return tuple(m for m in all_modalities() if not m.token_based)


def streams() -> tuple[Any, ...]:
  """Every dense task-feature stream (`spec.Stream`) of every registered modality."""
  return tuple(s for m in dense_modalities() for s in m.streams)


def length_keys() -> tuple[str, ...]:
  """The keys of `sequence_length`: the two token streams, then every stream
  whose leading axis is padded to a length of its own."""
  return ("inputs", "targets") + tuple(
      s.name for s in streams() if s.length == s.name)


def stream(name: str) -> Optional[Any]:
  """The `spec.Stream` of a dense feature name (None for other features)."""
  for s in streams():
    if s.name == name:
      return s
  return None


def owner_of(name: str) -> Optional[Any]:
  """The modality whose streams include the feature `name` (None otherwise)."""
  for m in dense_modalities():
    if any(s.name == name for s in m.streams):
      return m
  return None


def run_options() -> tuple[Any, ...]:
  """Every task option (`spec.RunOption`) a trained model depends on, once each."""
  out: dict[str, Any] = {}
  for m in all_modalities():
    for option in m.run_options:
      out.setdefault(option.key, option)
  return tuple(out.values())


def recorded_run_options(task_options: Iterable[Mapping[str, Any]]
                         ) -> dict[str, Any]:
  """The run options of a run's tasks, as the run directory records them.

  Each option appears when the tasks that set it agree on one value; when they
  disagree there is no single value to rebuild a one-off task with, and the
  option is left to the caller of `Generalist.load`.
  """
  task_options = [dict(o) for o in task_options]
  out = {}
  for option in run_options():
    values = {o[option.key] for o in task_options if option.key in o}
    if len(values) == 1:
      out[option.key] = values.pop()
  return out


def file_reader_of(name: str) -> tuple[str, ...]:
  """The file suffixes a slot of type `name` is read from (empty: none)."""
  return tuple(get(name).file_suffixes) if is_registered(name) else ()


def file_suffixes() -> tuple[str, ...]:
  """Every file suffix some registered modality reads, in registry order."""
  out: list[str] = []
  for m in all_modalities():
    out += [s for s in m.file_suffixes if s not in out]
  return tuple(out)


def decoding_kind(kind: str) -> Optional[Any]:
  """The `spec.DecodingKind` named `kind` that a modality declares (None: none)."""
  for m in all_modalities():
    for k in m.decoding_kinds:
      if k.name == kind:
        return k
  return None


def decoding_kinds() -> tuple[Any, ...]:
  """Every decoding kind the registered modalities declare, in registry order."""
  return tuple(k for m in all_modalities() for k in m.decoding_kinds)


def prediction_views(value: Any) -> dict[str, Any]:
  """The typed views every registered modality recognizes in a prediction."""
  out: dict[str, Any] = {}
  for m in all_modalities():
    out.update(m.prediction_views(value))
  return out


def closed_set_trie(vocab: Any, labels: Any, uncased: bool = False,
                    no_punctuation: bool = False) -> Any:
  """The trie of a free-text closed set given at call time (the inference API's
  `closed_set=`), normalized as a text target slot would normalize it."""
  return get("TEXT").label_trie(vocab, labels, uncased, no_punctuation)


def input_placements(example: Mapping[str, Any]
                     ) -> list[tuple[int, int, str, str]]:
  """(text offset, slot rank, modality name, description) of every present dense
  input slot of a host-side task example, in instruction order."""
  out = []
  for m in dense_modalities():
    out += m.placements(example)
  return sorted(out)


__all__ = ["all_modalities", "closed_set_trie", "decoding_kind",
           "decoding_kinds", "dense_modalities", "file_reader_of",
           "file_suffixes", "get", "get_processor", "input_placements",
           "is_registered", "length_keys", "names", "owner_of",
           "prediction_views", "recorded_run_options", "register", "remove",
           "run_options", "stream", "streams"]
