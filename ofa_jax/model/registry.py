"""The model-side registry: encoder adapters and target heads, by name.

Why one registry for both: a modality object names the model pieces that consume
its streams (`Modality.adapter` for inputs, `Modality.head` for dense targets);
task registration and the trainer check those names against this registry and
against the model's `OFAConfig` (`encoder_adapters`, `target_heads`), so a stream
that no piece consumes is refused instead of silently ignored.

The built-in tables are immutable ("module:Class", imported lazily so a piece may
live anywhere); pieces from outside the package (a plugin, a test) are added with
`register_adapter` / `register_head` and dropped with `remove_adapter` /
`remove_head`, seqio-registry style. This module names the streams of the pieces
it holds; nothing else in the model does.
"""

from __future__ import annotations

import importlib
import types
from typing import Mapping

# adapter name (the stream it reads) -> "module:Class" (see adapters.py).
_ADAPTERS: Mapping[str, str] = types.MappingProxyType({
    "images": "ofa_jax.model.adapters:ImageAdapter",
})
# head name (the dense target stream it produces) -> "module:Class". TTS frames
# and motion are later issues.
_HEADS: Mapping[str, str] = types.MappingProxyType({
    "target_image": "ofa_jax.model.image_code_head:ImageCodeHead",
})


class _Extra:
  """Pieces registered from outside the package."""

  adapters: dict[str, str] = {}
  heads: dict[str, str] = {}


def _add(kind: str, table: Mapping[str, str], extra: dict[str, str], name: str,
         path: str) -> None:
  if name in table or name in extra:
    raise ValueError(f"{kind} {name!r} is already registered")
  if ":" not in path:
    raise ValueError(f"{kind} {name!r}: expected 'package.module:Class', got "
                     f"{path!r}")
  extra[name] = path


def register_adapter(name: str, path: str) -> None:
  """Adds the encoder adapter `name` (its stream) at "package.module:Class"."""
  _add("encoder adapter", _ADAPTERS, _Extra.adapters, name, path)


def remove_adapter(name: str) -> None:
  if name in _ADAPTERS:
    raise ValueError(f"encoder adapter {name!r} is built in")
  _Extra.adapters.pop(name, None)


def register_head(name: str, path: str) -> None:
  """Adds the target head `name` (its dense target stream) at "module:Class"."""
  _add("target head", _HEADS, _Extra.heads, name, path)


def remove_head(name: str) -> None:
  if name in _HEADS:
    raise ValueError(f"target head {name!r} is built in")
  _Extra.heads.pop(name, None)


def adapters() -> dict[str, str]:
  """{adapter name: "module:Class"} of every registered encoder adapter."""
  return {**_ADAPTERS, **_Extra.adapters}


def heads() -> dict[str, str]:
  """{head name: "module:Class"} of every registered target head."""
  return {**_HEADS, **_Extra.heads}


def _load(kind: str, name: str, table: Mapping[str, str]) -> type:
  path = table.get(name, name if ":" in name else None)
  if path is None:
    raise ValueError(f"No {kind} {name!r}; known: {sorted(table)} (or give "
                     "'module:Class')")
  module_name, _, class_name = path.partition(":")
  try:
    return getattr(importlib.import_module(module_name), class_name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"Cannot load {kind} {path!r} for {name!r}: {e}") from e


def get_adapter_class(name: str) -> type:
  """The adapter class of a registered name (or of an explicit 'module:Class')."""
  return _load("encoder adapter", name, adapters())


def get_head_class(name: str) -> type:
  """The head class of a registered name (or of an explicit 'module:Class')."""
  return _load("target head", name, heads())
