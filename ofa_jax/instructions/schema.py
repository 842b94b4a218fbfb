"""The attribute schema of instruction slots: which key, which value kind, where.

Why a schema: OFASys reads attributes lazily (`has_attr`, `get_attr(k, type)`), so a
typo such as `closed_sett` or `mask_ratio=0,3` is silently ignored and the task trains
the wrong thing. Here every attribute is checked when the instruction is parsed: its
name, the kind of its value, its range, the slot types and the side it applies to.
The applicability follows OFASys's code (ofasys_reference.md §1), e.g. `no_loss` and
`closed_set` only make sense on target token slots, `mask_ratio` only on inputs.

The schema is assembled, never hand-kept: the generic attributes below, plus the
`attributes` each registered modality object declares (the ones its own
preprocessing reads). An attribute that no code reads cannot be accepted, and one
that a modality reads cannot be rejected.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import warnings
from typing import Callable, Mapping, Optional

from ofa_jax import modalities
from ofa_jax.instructions.elements import (SOURCE, TARGET, AttrValue,
                                        InstructionError)
from ofa_jax.modalities.spec import (BOTH_SIDES, TARGET_ONLY, AttrSpec)

_TGT = TARGET_ONLY
assert SOURCE in BOTH_SIDES and TARGET in BOTH_SIDES  # one spelling of the sides

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

# Attributes of every slot, whatever its type (`token_only`: token slots only).
GENERIC = (
    AttrSpec("preprocess", "name", BOTH_SIDES,
             doc="registered preprocessor variant of the slot"),
    AttrSpec("no_loss", "flag", TARGET_ONLY, token_only=True,
             doc="no loss; becomes a forced decoder prompt at inference"),
    AttrSpec("is_label", "flag", TARGET_ONLY, token_only=True,
             doc="the field the metrics compare against"),
    AttrSpec("disable_auto_boseos", "flag", BOTH_SIDES, token_only=True,
             doc="no automatic <s>/</s> around the merged token run"),
)


def attribute_table() -> dict[str, dict[str, AttrSpec]]:
  """{key: {slot type: spec}}: the generic attributes for every registered slot
  type, then each modality's own attributes (assembled, so it cannot drift)."""
  table: dict[str, dict[str, AttrSpec]] = {}
  objects = modalities.all_modalities()
  for spec in GENERIC:
    table[spec.key] = {m.name: spec for m in objects
                       if m.token_based or not spec.token_only}
  for m in objects:
    for spec in m.attributes:
      if spec.key in table and any(s in GENERIC for s in table[spec.key].values()):
        raise ValueError(f"modality {m.name}: attribute {spec.key!r} is generic "
                         "and cannot be redeclared")
      table.setdefault(spec.key, {})[m.name] = spec
  return table


class _Attributes(Mapping[str, AttrSpec]):
  """`ATTRIBUTES[key]`: one spec per key (the first declaring modality's), with
  `.modalities` / `.sides` widened to every slot type that accepts the key; read
  from the registry on every access, so added modalities are included."""

  def _merged(self) -> dict[str, AttrSpec]:
    out = {}
    for key, per_type in attribute_table().items():
      first = next(iter(per_type.values()))
      sides = frozenset().union(*(s.sides for s in per_type.values()))
      out[key] = _Merged(first, frozenset(per_type), sides)
    return out

  def __getitem__(self, key: str) -> AttrSpec:
    return self._merged()[key]

  def __iter__(self):
    return iter(self._merged())

  def __len__(self) -> int:
    return len(self._merged())


@dataclasses.dataclass(frozen=True)
class _Merged:
  """A key's spec as the parser sees it across slot types."""

  spec: AttrSpec
  modalities: frozenset
  sides: frozenset

  def __getattr__(self, name: str):
    return getattr(self.spec, name)


ATTRIBUTES = _Attributes()

# Keys that are recognised only to give a better error or a deprecation warning.
ALIASES = {"preprocessor": "preprocess"}  # a typo of the OFASys docs
_REMOVED = {
    "adaptor": "the model piece of a slot is named by its modality object "
               "(ofa_jax/modalities/<name>.py: adapter / head) and registered in "
               "ofa_jax/model/registry.py; remove the attribute",
    "add_bos": "BOS/EOS are added automatically around merged token slots "
               "(OFASys >= 0.1.0-patch1); use disable_auto_boseos to turn it off",
    "add_eos": "BOS/EOS are added automatically around merged token slots "
               "(OFASys >= 0.1.0-patch1); use disable_auto_boseos to turn it off",
}


def _names(types) -> str:
  return ", ".join(n for n in modalities.names() if n in types)


def _parse_value(spec: AttrSpec, raw: str, fail: Callable[[str], None]
                 ) -> AttrValue:
  if spec.kind == "int":
    if not _INT_RE.match(raw):
      fail(f"attribute {spec.key!r} expects an integer, got {raw!r}")
    value = int(raw)
    if value < spec.min_int:
      fail(f"attribute {spec.key!r} must be >= {spec.min_int}, got {value}")
    return value
  if spec.kind == "ratio":
    try:
      value = float(raw)
    except ValueError:
      fail(f"attribute {spec.key!r} expects a number in [0, 1], got {raw!r}")
    if math.isnan(value) or not 0.0 <= value <= 1.0:
      fail(f"attribute {spec.key!r} must be in [0, 1], got {raw}")
    return value
  if spec.kind == "name":
    if not _NAME_RE.match(raw):
      fail(f"attribute {spec.key!r} expects a name ([A-Za-z_][A-Za-z0-9_]*), "
           f"got {raw!r}")
    return raw
  if spec.kind == "bool":
    if raw.lower() in _TRUE:
      return True
    if raw.lower() in _FALSE:
      return False
    fail(f"attribute {spec.key!r} expects true or false, got {raw!r}")
  if spec.kind == "float":
    try:
      value = float(raw)
    except ValueError:
      fail(f"attribute {spec.key!r} expects a number, got {raw!r}")
    if math.isnan(value) or value <= 0:
      fail(f"attribute {spec.key!r} must be > 0, got {raw}")
    return value
  raise AssertionError(spec.kind)


@dataclasses.dataclass(frozen=True)
class RawAttr:
  """An attribute as written: key, optional value text, and their columns."""

  key: str
  key_column: int
  value: Optional[str]
  value_column: int


def validate_attrs(modality: str, side: str, raw_attrs: list[RawAttr],
                   template: str, deprecations: Optional[list[str]] = None
                   ) -> dict[str, AttrValue]:
  """Checks the attributes of one slot and returns their typed values.

  Deprecated spellings are accepted; their messages are appended to
  `deprecations` (so that the public parse functions can warn with the caller's
  stack level), or warned here when it is None.

  Raises:
    InstructionError: an unknown, misplaced, duplicated or badly valued attribute;
      the column points at its key (or at its value for a value problem).
  """
  values: dict[str, AttrValue] = {}
  columns: dict[str, int] = {}
  table = attribute_table() if raw_attrs else {}
  for raw in raw_attrs:
    def fail(reason: str, column: int = raw.key_column) -> None:
      raise InstructionError(reason, template, column)

    key = raw.key
    if key in _REMOVED:
      fail(f"attribute {key!r} is not supported: {_REMOVED[key]}")
    if key in ALIASES:
      message = (f"slot attribute {key!r} (at column {raw.key_column}) is a "
                 f"typo of the OFASys docs; write {ALIASES[key]!r}. "
                 f"Instruction: {template}")
      if deprecations is None:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
      else:
        deprecations.append(message)
      key = ALIASES[key]
    per_type = table.get(key)
    if per_type is None:
      close = difflib.get_close_matches(key, list(table), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      fail(f"unknown attribute {key!r}{hint}")
    if key in values:
      fail(f"duplicate attribute {key!r} (first at column {columns[key]})")
    if modality not in per_type:
      fail(f"attribute {key!r} does not apply to {modality} slots "
           f"(it applies to {_names(per_type)})")
    spec = per_type[modality]
    if side not in spec.sides:
      where = ("target slots (right of '->')" if spec.sides == _TGT else
               "source slots (left of '->')")
      fail(f"attribute {key!r} applies only to {where}")
    if spec.kind == "bool" and raw.value is None:
      value: AttrValue = True
    elif spec.kind == "flag":
      if raw.value is not None:
        fail(f"flag {key!r} takes no value (write {key!r} alone)",
             raw.value_column - 1)
      value = True
    else:
      if raw.value is None:
        fail(f"attribute {key!r} needs a value ({key}=<{spec.kind}>)")
      value = _parse_value(
          spec, raw.value,
          lambda reason: fail(reason, raw.value_column))  # noqa: B023
    values[key] = value
    columns[key] = raw.key_column
  _check_combinations(values, columns, template)
  return values


def _check_combinations(values: dict[str, AttrValue], columns: dict[str, int],
                        template: str) -> None:
  """Attribute pairs that contradict each other."""
  if "no_loss" in values and "closed_set" in values:
    raise InstructionError(
        "a 'no_loss' slot is a forced prompt and cannot also be 'closed_set'",
        template, max(columns["no_loss"], columns["closed_set"]))
  if "no_loss" in values and "is_label" in values:
    raise InstructionError(
        "a 'no_loss' slot is a forced prompt and cannot also be 'is_label'",
        template, max(columns["no_loss"], columns["is_label"]))
  low, high = values.get("min_length"), values.get("max_length")
  if low is not None and high is not None and low > high:
    raise InstructionError(
        f"min_length={low} is larger than max_length={high}", template,
        columns["min_length"])
