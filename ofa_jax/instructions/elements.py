"""The data model of a parsed multi-modal instruction (see `ofa_jax.instructions`).

Why frozen dataclasses with position-free equality: the plan, the task registry and
the tests compare instructions by *meaning*. Two spellings of one instruction (extra
spaces around `->`, attributes in another order, `( ... )*` vs `[[...]]*`) parse to
equal, equally hashed objects; the `template` and `column` fields only serve error
messages, so they take no part in `==` and `hash`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional, Union

from ofa_jax import modalities

SOURCE = "source"
TARGET = "target"
SIDES = (SOURCE, TARGET)

AttrValue = Union[bool, int, float, str]


class InstructionError(ValueError):
  """An invalid instruction, with the column of the problem and a caret display.

  Attributes:
    template: the full template string (all `|||` alternatives included).
    column: 0-based character index into `template` where the problem is.
    reason: what is wrong, without the location.
  """

  def __init__(self, reason: str, template: str, column: int):
    self.reason = reason
    self.template = template
    self.column = max(0, min(int(column), len(template)))
    super().__init__(self._message())

  def _message(self) -> str:
    # One display line: newlines / tabs would break the caret alignment.
    display = "".join(" " if c in "\n\r\t\f\v" else c for c in self.template)
    return (f"{self.reason} at column {self.column}:\n"
            f"  {display}\n"
            f"  {' ' * self.column}^")

  def __reduce__(self):  # picklable across processes (tf.data / multiprocessing)
    return (type(self), (self.reason, self.template, self.column))


class Attrs(Mapping[str, AttrValue]):
  """An immutable, hashable mapping of slot attributes, kept sorted by key.

  Sorting makes attribute order irrelevant to equality and gives one canonical
  printed order.
  """

  __slots__ = ("_items",)

  def __init__(self, items: Mapping[str, AttrValue] | Any = ()):
    pairs = items.items() if isinstance(items, Mapping) else items
    pairs = tuple(sorted((str(k), v) for k, v in pairs))
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
      raise ValueError(f"duplicate attribute keys in {keys}")
    object.__setattr__(self, "_items", pairs)

  def __getitem__(self, key: str) -> AttrValue:
    for k, v in self._items:
      if k == key:
        return v
    raise KeyError(key)

  def __iter__(self) -> Iterator[str]:
    return (k for k, _ in self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __hash__(self) -> int:
    return hash(self._items)

  def __eq__(self, other: object) -> bool:
    if isinstance(other, Attrs):
      return self._items == other._items
    if isinstance(other, Mapping):
      return dict(self._items) == dict(other)
    return NotImplemented

  def __repr__(self) -> str:
    return f"Attrs({dict(self._items)!r})"

  def items_tuple(self) -> tuple[tuple[str, AttrValue], ...]:
    return self._items


def _format_value(value: AttrValue) -> str:
  if isinstance(value, float):
    return repr(value)  # shortest text that parses back to the same float
  return str(value)


def _check_side(side: str) -> None:
  if side not in SIDES:
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")


@dataclasses.dataclass(frozen=True)
class Slot:
  """One `[TYPE:name,attrs]` slot.

  `position` is the index of the element on its side; a slot inside a group or a
  choice shares the position of that group or choice.
  """

  modality: str  # a registered slot type (`ofa_jax.modalities.names()`)
  name: Optional[str]
  attrs: Attrs = Attrs()
  side: str = SOURCE
  position: int = 0
  column: int = dataclasses.field(default=0, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "modality", str(self.modality))
    if not modalities.is_registered(self.modality):
      raise ValueError(f"unknown slot type {self.modality!r}; registered: "
                       f"{list(modalities.names())}")
    if not isinstance(self.attrs, Attrs):
      object.__setattr__(self, "attrs", Attrs(self.attrs))
    _check_side(self.side)

  @property
  def is_token_based(self) -> bool:
    """True when the slot's value becomes ids of the one token space."""
    return modalities.get(self.modality).token_based

  @property
  def is_source(self) -> bool:
    return self.side == SOURCE

  def get(self, attr: str, default: Any = None) -> Any:
    return self.attrs.get(attr, default)

  def has(self, flag: str) -> bool:
    return bool(self.attrs.get(flag, False))

  def to_string(self) -> str:
    text = self.modality
    if self.name is not None:
      text += f":{self.name}"
    for key, value in self.attrs.items_tuple():
      text += f",{key}" if value is True else f",{key}={_format_value(value)}"
    return f"[{text}]"


@dataclasses.dataclass(frozen=True)
class PlainText:
  """Literal text between slots, kept verbatim (quotes and inner spaces included)."""

  text: str
  side: str = SOURCE
  position: int = 0
  column: int = dataclasses.field(default=0, compare=False)

  def __post_init__(self):
    _check_side(self.side)

  def to_string(self) -> str:
    return self.text


@dataclasses.dataclass(frozen=True)
class SlotGroup:
  """Several slots written inside one pair of outer brackets.

  The fields and checks of the two bracketed forms; what the slots mean (repeat
  them all, or pick one) is the subclass. Equality includes the class, so a group
  never equals a choice over the same slots.
  """

  slots: tuple[Slot, ...]
  side: str = SOURCE
  position: int = 0
  column: int = dataclasses.field(default=0, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "slots", tuple(self.slots))
    if not self.slots:
      raise ValueError(f"{type(self).__name__} needs at least one slot")
    _check_side(self.side)


@dataclasses.dataclass(frozen=True)
class InterleavedGroup(SlotGroup):
  """`[[BOX:boxes][TEXT:labels]]*`: repeats its slots over list-valued fields.

  The data pipeline (`ofa_jax.plan.build`) repeats them, in TF.
  """

  def to_string(self) -> str:
    return "[" + "".join(s.to_string() for s in self.slots) + "]*"


@dataclasses.dataclass(frozen=True)
class ContrastiveChoice(SlotGroup):
  """`[[TEXT:pos]|[TEXT:neg]]`: one of its slots is used per example."""

  def to_string(self) -> str:
    return "[" + "|".join(s.to_string() for s in self.slots) + "]"


Element = Union[Slot, PlainText, InterleavedGroup, ContrastiveChoice]


def _flatten(elements: tuple[Element, ...]) -> tuple[Slot, ...]:
  out: list[Slot] = []
  for element in elements:
    if isinstance(element, Slot):
      out.append(element)
    elif isinstance(element, SlotGroup):
      out.extend(element.slots)
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One alternative of a template: source (encoder) and target (decoder) elements.

  `template` is the full template string the instruction was parsed from (all
  `|||` alternatives), which the `column` fields of its elements index into.
  """

  template: str = dataclasses.field(compare=False)
  source: tuple[Element, ...]
  target: tuple[Element, ...]

  def __post_init__(self):
    object.__setattr__(self, "source", tuple(self.source))
    object.__setattr__(self, "target", tuple(self.target))

  def source_slots(self) -> tuple[Slot, ...]:
    """Every source slot in order, groups and choices flattened."""
    return _flatten(self.source)

  def target_slots(self) -> tuple[Slot, ...]:
    """Every target slot in order, groups and choices flattened."""
    return _flatten(self.target)

  def slots(self) -> tuple[Slot, ...]:
    return self.source_slots() + self.target_slots()

  def data_fields(self) -> tuple[str, ...]:
    """Names of the data fields the examples must provide, in first-use order.

    Unnamed slots (e.g. OFASys's `[IMAGE,preprocess=image_vqgan]`) read no named
    field and are not listed.
    """
    seen: dict[str, None] = {}
    for slot in self.slots():
      if slot.name is not None:
        seen.setdefault(slot.name, None)
    return tuple(seen)

  def label_slot(self) -> Optional[Slot]:
    """The target slot the metrics compare with: the `is_label` one, else the
    last target slot that is not a `no_loss` prompt (None without targets)."""
    slots = self.target_slots()
    for slot in slots:
      if slot.has("is_label"):
        return slot
    answers = [s for s in slots if not s.has("no_loss")]
    return answers[-1] if answers else None

  @property
  def target_modality(self) -> Optional[str]:
    """The modality the decoder produces: that of the last target slot (as OFASys).

    A non-token target is always the only target slot, so this is unambiguous for
    it; with several token targets the decoder emits tokens either way.
    """
    slots = self.target_slots()
    return slots[-1].modality if slots else None

  @property
  def is_token_target(self) -> bool:
    """True when the decoder emits token ids (every target slot is token-based)."""
    return all(s.is_token_based for s in self.target_slots())

  def to_string(self) -> str:
    """Canonical text; `parse(x.to_string()) == x`."""
    source = "".join(e.to_string() for e in self.source)
    target = "".join(e.to_string() for e in self.target)
    return f"{source} -> {target}".strip()


@dataclasses.dataclass(frozen=True)
class Template:
  """`|||`-separated alternative instructions for one task."""

  template: str = dataclasses.field(compare=False)
  alternatives: tuple[Instruction, ...]

  def __post_init__(self):
    object.__setattr__(self, "alternatives", tuple(self.alternatives))
    if not self.alternatives:
      raise ValueError("a Template needs at least one alternative")

  def data_fields(self) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for alternative in self.alternatives:
      for name in alternative.data_fields():
        seen.setdefault(name, None)
    return tuple(seen)

  def to_string(self) -> str:
    return " ||| ".join(a.to_string() for a in self.alternatives)
