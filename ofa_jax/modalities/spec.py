"""What a modality declares about itself: slot attributes, feature streams, run
options and decoding kinds.

Why a separate, TensorFlow-free module: the instruction parser assembles its
attribute schema from these declarations, and the feature converter, the plan
and the inference API derive the feature layout from them. Keeping the two
record types here lets each of those read a modality's declaration without
knowing which modality it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

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


@dataclasses.dataclass(frozen=True)
class RunOption:
  """A task option that a trained model depends on (e.g. the input image side).

  Why declared: the model directory must remember it so that `Generalist.load`
  builds its one-off tasks as the trained ones were built, and the inference CLI
  offers it as a flag (`--KEY`); the trainer, the run-directory reader and the
  CLI ask the modalities for these instead of naming them.
  """

  key: str
  type: type
  doc: str = ""

  def accepts(self, value: object) -> bool:
    """True when `value` is of the option's type (a bool is not an int here)."""
    if isinstance(value, bool) and self.type is not bool:
      return False
    return isinstance(value, self.type)


@dataclasses.dataclass(frozen=True)
class DecodingKind:
  """How the targets of a modality decode (`DecodingSpec.kind` names one).

  Why declared by the modality: the decoder's vocabulary for a target (exactly
  4 bins per box, only image codes, ...) and the typed views of its prediction
  are the modality's knowledge; decoding, the model and the API ask the kind.

  Attributes:
    name: the kind's name (`DecodingSpec.kind`).
    token_decoder: False for dense targets produced by an output head.
    fixed_length: the target fixes the answer length (free-length overrides
      `max_len` / `min_len` do not apply).
    method: the default search ("beam" or "sample").
    top_k: the default sampling `top_k` (0: off).
    code_targets: the targets are VQ image codes (the decoder's `code_mask`).
    constraints: (spec, id layout) -> constraints of the token decoder; None:
      free text.
    views: postprocessed value -> {`results.Result` field: value}, the typed
      views of a prediction of this kind; None: none.
  """

  name: str
  token_decoder: bool = True
  fixed_length: bool = False
  method: str = "beam"
  top_k: int = 0
  code_targets: bool = False
  constraints: Optional[Callable[[Any, Any], tuple]] = None
  views: Optional[Callable[[Any], dict]] = None
