"""The scanner and checker behind `ofa_jax.instructions.parse` (one alternative).

Why hand-written instead of OFASys's regex: a regex cannot say *where* an
instruction stops making sense, and OFASys's turns anything it does not match into
plain text. This scanner walks the text once, keeps absolute columns (into the full
`|||` template) for every element, and stops at the first problem with its column.
"""

from __future__ import annotations

import dataclasses
import difflib
import string
from typing import NoReturn, Optional, Union

from ofa_jax import modalities
from ofa_jax.instructions.schema import RawAttr, validate_attrs
from ofa_jax.instructions.elements import (SOURCE, TARGET, ContrastiveChoice,
                                        Element, Instruction,
                                        InstructionError, InterleavedGroup,
                                        PlainText, Slot)

_IDENT = frozenset(string.ascii_letters + string.digits + "_")
_VALUE = _IDENT | frozenset(".+-")
_SPACE = frozenset(" \t\r\n\f\v")


@dataclasses.dataclass
class _RawSlot:
  modality: str
  name: Optional[str]
  attrs: list[RawAttr]
  column: int


@dataclasses.dataclass
class _RawText:
  text: str
  column: int


@dataclasses.dataclass
class _RawPattern:
  contrastive: bool
  slots: list[_RawSlot]
  column: int


@dataclasses.dataclass
class _Arrow:
  column: int


_Raw = Union[_RawSlot, _RawText, _RawPattern, _Arrow]


class _Scanner:
  """Scans `template[start:end]` into raw items with absolute columns."""

  def __init__(self, template: str, start: int, end: int):
    self.t = template
    self.start = start
    self.end = end

  def fail(self, reason: str, column: int) -> NoReturn:
    raise InstructionError(reason, self.t, column)

  def _skip(self, k: int, chars: frozenset) -> int:
    while k < self.end and self.t[k] in chars:
      k += 1
    return k

  def _unexpected(self, k: int, where: str) -> NoReturn:
    c = self.t[k]
    if c in _SPACE:
      self.fail(f"whitespace is not allowed {where}", k)
    self.fail(f"unexpected character {c!r} {where}", k)

  def scan(self) -> list[_Raw]:
    t, e = self.t, self.end
    items: list[_Raw] = []
    text_start: Optional[int] = None
    k = self.start
    while k < e:
      c = t[k]
      item: Optional[_Raw] = None
      if t.startswith("->", k, e):
        item, nxt = _Arrow(k), k + 2
      elif c == "[":
        item, nxt = (self._pattern(k) if t.startswith("[", k + 1, e)
                     else self._slot(k))
      elif c == "]":
        self.fail("unmatched ']' (a slot is written [TYPE:name,attr])", k)
      elif c == "(":
        found = self._paren_group(k)
        if found is not None:
          item, nxt = found
      if item is None:
        if text_start is None:
          text_start = k
        k += 1
        continue
      if text_start is not None:
        items.append(_RawText(t[text_start:k], text_start))
        text_start = None
      items.append(item)
      k = nxt
    if text_start is not None:
      items.append(_RawText(t[text_start:e], text_start))
    return items

  def _slot(self, i: int) -> tuple[_RawSlot, int]:
    """`[TYPE(:name)?(,key(=value)?)*]` starting at `i`."""
    t = self.t
    j = i + 1
    while j < self.end and t[j] not in "[]":
      j += 1
    if j >= self.end or t[j] == "[":
      self.fail("unterminated slot: this '[' has no matching ']'", i)
    k = self._skip(i + 1, _IDENT)
    type_name = t[i + 1:k]
    if not type_name:
      if k == j:
        self.fail("empty slot '[]'", i)
      self._unexpected(k, "where a slot type is expected")
    types = modalities.names()
    if type_name not in types:
      close = [m for m in types if m == type_name.upper()] or \
          difflib.get_close_matches(type_name.upper(), types, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      self.fail(f"unknown slot type {type_name!r} (expected one of "
                f"{', '.join(types)}{hint})", i + 1)
    name = None
    if t[k] == ":":
      n = self._skip(k + 1, _IDENT)
      if n == k + 1:
        if t[n] in ",]":
          self.fail("missing field name after ':'", k + 1)
        self._unexpected(n, "in a field name")
      name, k = t[k + 1:n], n
    attrs: list[RawAttr] = []
    while k < j:
      if t[k] != ",":
        self._unexpected(k, "in a slot (expected ',' or ']')")
      key_end = self._skip(k + 1, _IDENT)
      if key_end == k + 1:
        if t[key_end] in ",]=":
          self.fail("missing attribute name after ','", k + 1)
        self._unexpected(key_end, "in an attribute name")
      key, k = t[k + 1:key_end], key_end
      value = None
      if t[k] == "=":
        value_end = self._skip(k + 1, _VALUE)
        if value_end == k + 1:
          if t[value_end] in ",]":
            self.fail(f"missing value after '{key}='", k + 1)
          self._unexpected(value_end, "in an attribute value")
        value, k = t[k + 1:value_end], value_end
      attrs.append(RawAttr(key, key_end - len(key), value,
                           key_end + 1))
    return _RawSlot(type_name, name, attrs, i), j + 1

  def _pattern(self, i: int) -> tuple[_RawPattern, int]:
    """`[[a][b]]*` (interleaved) or `[[a]|[b]]` (contrastive) starting at `i`."""
    t, e = self.t, self.end
    slots: list[_RawSlot] = []
    seps: list[tuple[str, int]] = []  # what stands between consecutive slots
    k = i + 1
    while True:
      k = self._skip(k, _SPACE)
      if k >= e:
        self.fail("unterminated pattern: this '[' has no matching ']'", i)
      c = t[k]
      if c == "[":
        if t.startswith("[", k + 1, e):
          self.fail("patterns cannot be nested", k)
        if slots and len(seps) < len(slots):
          seps.append(("", k))
        slot, k = self._slot(k)
        slots.append(slot)
      elif c == "|":
        if len(seps) == len(slots):
          self.fail("'|' must stand between two slots", k)
        seps.append(("|", k))
        k += 1
      elif c == "]":
        if len(seps) == len(slots):  # `[[a]|]`
          self.fail("expected a slot after '|'", k)
        break
      else:
        self._unexpected(k, "in a pattern (expected '[', '|' or ']')")
    kinds = [s for s, _ in seps]
    if "|" in kinds:
      if "" in kinds:
        self.fail("a contrastive choice separates every slot with '|'",
                  seps[kinds.index("")][1])
      if t.startswith("*", k + 1, e):
        self.fail("a contrastive choice cannot be repeated with '*'", k + 1)
      return _RawPattern(True, slots, i), k + 1
    if not t.startswith("*", k + 1, e):
      self.fail("an interleaved group must end with ']*' (or separate its slots "
                "with '|' for a contrastive choice)", k + 1)
    return _RawPattern(False, slots, i), k + 2

  def _paren_group(self, i: int) -> Optional[tuple[_RawPattern, int]]:
    """`( [a] [b] )*` at `i`, or None when the `(` is plain text."""
    t, e = self.t, self.end
    starts = []
    k = self._skip(i + 1, _SPACE)
    while k < e and t[k] == "[":
      j = k + 1
      while j < e and t[j] not in "[]":
        j += 1
      if j >= e or t[j] == "[":
        return None  # not slots only; the '[' will report its own problem
      starts.append(k)
      k = self._skip(j + 1, _SPACE)
    if not starts or not t.startswith(")*", k, e):
      return None
    return _RawPattern(False, [self._slot(s)[0] for s in starts], i), k + 2


def _strip_edges(items: list[_Raw]) -> list[_Raw]:
  """Drops the spaces at both ends of a side: they mean nothing next to `->`."""
  items = list(items)
  if items and isinstance(items[0], _RawText):
    first = items[0]
    stripped = first.text.lstrip()
    items[0] = _RawText(stripped, first.column + len(first.text) - len(stripped))
  if items and isinstance(items[-1], _RawText):
    items[-1] = _RawText(items[-1].text.rstrip(), items[-1].column)
  return [x for x in items if not (isinstance(x, _RawText) and not x.text)]


def _build_side(items: list[_Raw], side: str, template: str,
                deprecations: list[str]) -> tuple[Element, ...]:
  def make_slot(raw: _RawSlot, position: int) -> Slot:
    attrs = validate_attrs(raw.modality, side, raw.attrs, template,
                           deprecations)
    return Slot(raw.modality, raw.name, attrs, side, position, raw.column)

  elements: list[Element] = []
  for position, raw in enumerate(_strip_edges(items)):
    if isinstance(raw, _RawText):
      elements.append(PlainText(raw.text, side, position, raw.column))
    elif isinstance(raw, _RawSlot):
      elements.append(make_slot(raw, position))
    else:
      assert isinstance(raw, _RawPattern)
      slots = tuple(make_slot(s, position) for s in raw.slots)
      cls = ContrastiveChoice if raw.contrastive else InterleavedGroup
      elements.append(cls(slots, side, position, raw.column))
  return tuple(elements)


def _check(source: tuple[Element, ...], target: tuple[Element, ...],
           template: str, column: int) -> None:
  """Rules that involve several elements."""
  bearing = {SOURCE: [e for e in source if not isinstance(e, PlainText)],
             TARGET: [e for e in target if not isinstance(e, PlainText)]}
  if not bearing[SOURCE] and not bearing[TARGET]:
    raise InstructionError("the instruction has no slot", template, column)
  for element in bearing[SOURCE] + bearing[TARGET]:
    if isinstance(element, ContrastiveChoice):
      first = element.slots[0]
      for slot in element.slots[1:]:
        if slot.modality != first.modality:
          raise InstructionError(
              f"all slots of a contrastive choice must have one type "
              f"({first.modality} vs {slot.modality})", template,
              slot.column)
  token_types = ", ".join(m.name for m in modalities.all_modalities()
                          if m.token_based)
  for element in bearing[TARGET]:
    slots = (element,) if isinstance(element, Slot) else element.slots
    for slot in slots:
      if slot.is_token_based:
        continue
      if isinstance(element, InterleavedGroup):
        raise InstructionError(
            f"a {slot.modality} target cannot repeat in an interleaved "
            f"group: it must be the only target slot", template, slot.column)
      if len(bearing[TARGET]) > 1:
        raise InstructionError(
            f"a {slot.modality} target must be the only target slot "
            f"(only token targets, {token_types}, can be combined)", template,
            slot.column)


def parse_alternative(template: str, start: int, end: int,
                      deprecations: list[str]) -> Instruction:
  """Parses `template[start:end]`, one alternative without `|||`.

  Messages about deprecated spellings are appended to `deprecations`.
  """
  scanner = _Scanner(template, start, end)
  items = scanner.scan()
  arrows = [x for x in items if isinstance(x, _Arrow)]
  if not arrows:
    content_end = start + len(template[start:end].rstrip())
    scanner.fail("missing '->' between the source (encoder) and the target "
                 "(decoder) side", content_end)
  if len(arrows) > 1:
    scanner.fail(f"more than one '->' (the first is at column "
                 f"{arrows[0].column})", arrows[1].column)
  cut = items.index(arrows[0])
  source = _build_side(items[:cut], SOURCE, template, deprecations)
  target = _build_side(items[cut + 1:], TARGET, template, deprecations)
  first_column = start + len(template[start:end]) - len(
      template[start:end].lstrip())
  _check(source, target, template, first_column)
  return Instruction(template=template, source=source, target=target)
