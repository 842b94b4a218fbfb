"""The attribute schema of instruction slots: which key, which value kind, where.

Why a schema: OFASys reads attributes lazily (`has_attr`, `get_attr(k, type)`), so a
typo such as `closed_sett` or `mask_ratio=0,3` is silently ignored and the task trains
the wrong thing. Here every attribute is checked when the instruction is parsed: its
name, the kind of its value, its range, the slot types and the side it applies to.
The applicability follows OFASys's code (ofasys_reference.md §1), e.g. `no_loss` and
`closed_set` only make sense on target token slots, `mask_ratio` only on inputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import warnings
from typing import Callable, Optional

from ofa_jax import features
from ofa_jax.instructions.elements import (SOURCE, TARGET, AttrValue,
                                        InstructionError)

M = features.Modality
_ALL = frozenset(M)
_TOKEN = frozenset(features.TOKEN_MODALITIES)
_BOTH = frozenset({SOURCE, TARGET})
_SRC = frozenset({SOURCE})
_TGT = frozenset({TARGET})

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclasses.dataclass(frozen=True)
class AttrSpec:
  """One attribute: `kind` is 'flag', 'int', 'ratio' (float in [0, 1]) or 'name'."""

  key: str
  kind: str
  modalities: frozenset
  sides: frozenset
  min_int: int = 1  # for 'int': smallest allowed value
  doc: str = ""


_SPECS = (
    AttrSpec("preprocess", "name", _ALL, _BOTH,
             doc="registered preprocessor of the slot"),
    AttrSpec("adaptor", "name", _ALL, _BOTH, doc="registered model adapter"),
    AttrSpec("no_loss", "flag", _TOKEN, _TGT,
             doc="no loss; becomes a forced decoder prompt at inference"),
    AttrSpec("closed_set", "flag", frozenset({M.TEXT, M.CATEGORY}), _TGT,
             doc="decode under a prefix trie of the answer set"),
    AttrSpec("is_label", "flag", _TOKEN, _TGT,
             doc="the field the metrics compare against"),
    AttrSpec("uncased", "flag", frozenset({M.TEXT, M.STRUCT, M.CATEGORY}),
             _BOTH, doc="lower-case the value"),
    AttrSpec("no_punctuation", "flag",
             frozenset({M.TEXT, M.STRUCT, M.CATEGORY}), _BOTH,
             doc="strip punctuation"),
    AttrSpec("disable_auto_boseos", "flag", _TOKEN, _BOTH,
             doc="no automatic <s>/</s> around the merged token run"),
    AttrSpec("mask_ratio", "ratio", frozenset({M.TEXT, M.IMAGE, M.PHONE}),
             _SRC, doc="span masking (text, phone) / centre mask (image)"),
    AttrSpec("noise_ratio", "ratio", frozenset({M.TEXT}), _BOTH,
             doc="replace tokens with random text tokens"),
    AttrSpec("max_length", "int", _TOKEN | {M.MOTION}, _BOTH,
             doc="truncate tokens; longest motion clip"),
    AttrSpec("length", "int", frozenset({M.IMAGE}), _TGT,
             doc="truncate the image code sequence"),
    AttrSpec("image_size", "int", frozenset({M.IMAGE, M.VIDEO}), _BOTH,
             doc="resize side in pixels"),
    AttrSpec("n_frames_per_step", "int", frozenset({M.AUDIO}), _TGT,
             doc="fbank frames emitted per decoder step (TTS)"),
    AttrSpec("use_mask", "flag", frozenset({M.AUDIO}), _SRC,
             doc="wav2vec-style time/channel masking in the adapter"),
    AttrSpec("sample_rate", "int", frozenset({M.AUDIO, M.MOTION}), _BOTH,
             doc="audio Hz / motion frames per second"),
    AttrSpec("max_frames", "int", frozenset({M.AUDIO}), _BOTH,
             doc="longest fbank sequence"),
    AttrSpec("n_frames", "int", frozenset({M.VIDEO}), _BOTH,
             doc="frames sampled uniformly from the clip"),
    AttrSpec("min_length", "int", frozenset({M.MOTION}), _BOTH,
             doc="shortest motion clip (shorter clips are skipped)"),
    AttrSpec("soft_trim", "ratio", frozenset({M.MOTION}), _BOTH,
             doc="fraction of the clip that may be trimmed from its ends"),
    AttrSpec("window", "flag", frozenset({M.MOTION}), _BOTH,
             doc="train on a random span of the clip"),
    AttrSpec("anchor_frame", "int", frozenset({M.MOTION}), _BOTH, min_int=0,
             doc="frame the motion is canonicalised to"),
    AttrSpec("max_image_size", "int", frozenset({M.BOX}), _BOTH,
             doc="side that the 1000 bins span"),
)
ATTRIBUTES = {spec.key: spec for spec in _SPECS}

# Keys that are recognised only to give a better error or a deprecation warning.
ALIASES = {"preprocessor": "preprocess"}  # a typo of the OFASys docs
_REMOVED = {
    "add_bos": "BOS/EOS are added automatically around merged token slots "
               "(OFASys >= 0.1.0-patch1); use disable_auto_boseos to turn it off",
    "add_eos": "BOS/EOS are added automatically around merged token slots "
               "(OFASys >= 0.1.0-patch1); use disable_auto_boseos to turn it off",
}


def _names(modalities) -> str:
  return ", ".join(m.value for m in M if m in modalities)


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
  raise AssertionError(spec.kind)


@dataclasses.dataclass(frozen=True)
class RawAttr:
  """An attribute as written: key, optional value text, and their columns."""

  key: str
  key_column: int
  value: Optional[str]
  value_column: int


def validate_attrs(modality: M, side: str, raw_attrs: list[RawAttr],
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
    spec = ATTRIBUTES.get(key)
    if spec is None:
      close = difflib.get_close_matches(key, list(ATTRIBUTES), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      fail(f"unknown attribute {key!r}{hint}")
    if key in values:
      fail(f"duplicate attribute {key!r} (first at column {columns[key]})")
    if modality not in spec.modalities:
      fail(f"attribute {key!r} does not apply to {modality.value} slots "
           f"(it applies to {_names(spec.modalities)})")
    if side not in spec.sides:
      where = ("target slots (right of '->')" if spec.sides == _TGT else
               "source slots (left of '->')")
      fail(f"attribute {key!r} applies only to {where}")
    if spec.kind == "flag":
      if raw.value is not None:
        fail(f"flag {key!r} takes no value (write {key!r} alone)",
             raw.value_column - 1)
      value: AttrValue = True
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
