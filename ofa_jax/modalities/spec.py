"""What a modality declares about itself: its slot attributes and its feature streams.

Why a separate, TensorFlow-free module: the instruction parser assembles its
attribute schema from these declarations, and the feature converter, the plan
and the inference API derive the feature layout from them. Keeping the two
record types here lets each of those read a modality's declaration without
knowing which modality it is.
"""

from __future__ import annotations

import dataclasses

SOURCE = "source"
TARGET = "target"
BOTH_SIDES = frozenset({SOURCE, TARGET})
SOURCE_ONLY = frozenset({SOURCE})
TARGET_ONLY = frozenset({TARGET})

# Value kinds of an attribute: 'flag' (bare key), 'bool' (bare key or =true /
# =false), 'int', 'ratio' (a float in [0, 1]), 'float' (a number > 0) and 'name'.
ATTR_KINDS = ("flag", "bool", "int", "ratio", "float", "name")


@dataclasses.dataclass(frozen=True)
class AttrSpec:
  """One slot attribute: its key, value kind, the sides it applies to, its doc.

  A modality lists the attributes its own preprocessing reads; the parser's
  schema is the union of those lists plus the generic attributes shared by
  every slot, so an attribute nobody reads cannot be accepted.
  """

  key: str
  kind: str
  sides: frozenset = BOTH_SIDES
  min_int: int = 1  # for 'int': smallest allowed value
  doc: str = ""
  token_only: bool = False  # generic attributes that make sense on token slots

  def __post_init__(self):
    if self.kind not in ATTR_KINDS:
      raise ValueError(f"attribute {self.key!r}: kind {self.kind!r} is not one of "
                       f"{ATTR_KINDS}")
    object.__setattr__(self, "sides", frozenset(self.sides))


@dataclasses.dataclass(frozen=True)
class Stream:
  """One task feature of a dense modality, as every task emits it.

  Attributes:
    name: the feature name (the primary stream's name is also its
      `sequence_length` key).
    dtype: "float32" or "int32".
    rank: the per-example rank.
    length: the `sequence_length` key its leading axes are padded to, or a fixed
      size (e.g. 1 for a per-slot scalar of a one-slot stream).
    padded_axes: how many leading axes are padded to `length` (2 for a square
      image padded on both sides); the rest are static trailing dims.
    trailing: static trailing dims of a companion (e.g. (6,) for a geometry);
      a primary stream's trailing dims come from the task options instead.
    empty_length: the leading size of the value of a task that does not use
      the stream (0, or `length` for fixed-size companions).
  """

  name: str
  dtype: str
  rank: int
  length: str | int
  padded_axes: int = 1
  trailing: tuple[int, ...] = ()
  empty_length: int = 0

  @property
  def is_float(self) -> bool:
    return self.dtype == "float32"
