"""The OFASys multi-modal instruction grammar: parse, validate, print, lint.

An instruction declares a task in one line, e.g.
`[IMAGE:img] what does the image describe? -> [TEXT:cap]`:

* slots `[TYPE(:name)?(,attr(=value)?)*]`, TYPE a registered modality
  (`ofa_jax.modalities.names()`);
* plain text between slots, kept verbatim (leading / trailing spaces of each side
  are dropped: they carry no meaning next to `->` or the ends);
* exactly one `->`: left = source (encoder), right = target (decoder);
* an interleaved group `[[BOX:boxes][TEXT:labels]]*`, also written
  `( [BOX:boxes] [TEXT:labels] )*`, repeated over list-valued fields
  (by the data pipeline); a `(` that does not open `( [slot] ... )*` is plain text;
* a contrastive choice `[[TEXT:a]|[TEXT:b]]`: one slot per example;
* `|||` between alternative templates (`parse_template`; the data pipeline
  draws one per example).

Why stricter than OFASys: there, a slot that does not match the regex silently
becomes plain text and an unknown attribute is ignored, so a typo trains a different
task. Here every `[` opens a slot, every attribute is checked against a schema
(`instructions/schema.py`), and errors carry the column with a caret display.

Several target slots are allowed when all are token-based (they merge into one
decoder sequence); a dense target (IMAGE, AUDIO, MOTION, VIDEO) must be alone,
because its output head replaces the token head.

Command line linter: `python -m ofa_jax.instructions "<instruction>"`.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any, Optional, Sequence

from ofa_jax import modalities
from ofa_jax.instructions.parser import parse_alternative
from ofa_jax.instructions.schema import ATTRIBUTES, AttrSpec
from ofa_jax.instructions.elements import (SOURCE, TARGET, Attrs,
                                        ContrastiveChoice, Element,
                                        Instruction, InstructionError,
                                        InterleavedGroup, PlainText, Slot,
                                        Template)

__all__ = [
    "ATTRIBUTES", "AttrSpec", "Attrs", "ContrastiveChoice", "Element",
    "Instruction", "InstructionError", "InterleavedGroup", "PlainText", "SOURCE",
    "Slot", "TARGET", "Template", "main", "parse",
    "parse_template", "to_json",
]

SEPARATOR = "|||"


def _parse(text: str) -> tuple[Template, list[str]]:
  """The template and the deprecation messages met while parsing it."""
  if not isinstance(text, str):
    raise TypeError(f"an instruction must be a str, got {type(text).__name__}")
  if not text.strip():
    raise InstructionError("empty instruction", text, 0)
  bounds: list[tuple[int, int]] = []
  start = 0
  while True:
    found = text.find(SEPARATOR, start)
    end = len(text) if found < 0 else found
    if not text[start:end].strip():
      # Point at the '|||' next to the empty alternative.
      raise InstructionError("empty alternative next to '|||'", text,
                             found if found >= 0 else start - len(SEPARATOR))
    bounds.append((start, end))
    if found < 0:
      break
    start = found + len(SEPARATOR)
  deprecations: list[str] = []
  alternatives = tuple(parse_alternative(text, s, e, deprecations)
                       for s, e in bounds)
  return Template(template=text, alternatives=alternatives), deprecations


def parse_template(text: str) -> Template:
  """Parses `|||`-separated alternatives; columns index into the whole `text`.

  Raises:
    InstructionError: on any problem in any alternative.
  """
  template, deprecations = _parse(text)
  for message in deprecations:
    warnings.warn(message, DeprecationWarning, stacklevel=2)
  return template


def parse(text: str) -> Instruction:
  """Parses one instruction (no `|||`; use `parse_template` for alternatives).

  Raises:
    InstructionError: the instruction is invalid; `.column` says where.
  """
  if isinstance(text, str) and SEPARATOR in text:
    raise InstructionError(
        "'|||' separates alternative templates; use parse_template() for them",
        text, text.find(SEPARATOR))
  template, deprecations = _parse(text)
  for message in deprecations:
    warnings.warn(message, DeprecationWarning, stacklevel=2)
  return template.alternatives[0]


def _slot_json(slot: Slot) -> dict[str, Any]:
  return {"kind": "slot", "type": slot.modality, "name": slot.name,
          "attributes": dict(slot.attrs), "side": slot.side,
          "position": slot.position, "column": slot.column}


def to_json(instruction: Instruction, *, alternative: Optional[int] = None,
            with_text: bool = False) -> list[dict[str, Any]]:
  """JSON-ready objects for the slots (and groups / choices, nested) in order."""
  out = []
  for element in instruction.source + instruction.target:
    if isinstance(element, Slot):
      obj = _slot_json(element)
    elif isinstance(element, PlainText):
      if not with_text:
        continue
      obj = {"kind": "text", "text": element.text, "side": element.side,
             "position": element.position, "column": element.column}
    else:
      kind = ("interleaved" if isinstance(element, InterleavedGroup)
              else "contrastive")
      obj = {"kind": kind, "side": element.side, "position": element.position,
             "column": element.column,
             "slots": [_slot_json(s) for s in element.slots]}
    if alternative is not None:
      obj["alternative"] = alternative
    out.append(obj)
  return out


_USAGE = """\
usage: python -m ofa_jax.instructions [--text] "<instruction>"

Prints the parsed slots of the instruction as JSON (a list of objects: kind, type,
name, attributes, side, position, column; groups and choices nest their slots; with
'|||' alternatives each object also has 'alternative'). --text also lists plain
text. Exit status: 0 valid, 2 invalid (the caret message goes to stderr).
Slot types: {types}
Attributes: {attrs}
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The linter; returns the exit status."""
  args = list(sys.argv[1:] if argv is None else argv)
  with_text = "--text" in args
  args = [a for a in args if a != "--text"]
  if not args or any(a in ("-h", "--help") for a in args):
    usage = _USAGE.format(types=", ".join(modalities.names()),
                          attrs=", ".join(ATTRIBUTES))
    (sys.stdout if args else sys.stderr).write(usage)
    return 0 if args else 2
  if len(args) != 1:
    print(f"expected one instruction (quote it), got {len(args)} arguments",
          file=sys.stderr)
    return 2
  try:
    with warnings.catch_warnings():
      # Show the deprecation of `preprocessor=` to the person linting.
      warnings.simplefilter("default", DeprecationWarning)
      template = parse_template(args[0])
  except InstructionError as e:
    print(f"invalid instruction: {e}", file=sys.stderr)
    return 2
  many = len(template.alternatives) > 1
  results = []
  for k, alt in enumerate(template.alternatives):
    results.extend(to_json(alt, alternative=k if many else None,
                           with_text=with_text))
  print(json.dumps(results, indent=2))
  return 0

