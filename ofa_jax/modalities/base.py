"""The base classes every modality object derives from.

Why one object per modality: the plan, the feature converter, the instruction
parser, the inference API and the model checks know nothing about pixels, fbanks
or bins. Each asks the modality object of a slot's type (`ofa_jax.modalities.get`)
for what it needs: the slot attributes it reads, the task-feature streams it
emits (and their empty values when a task does not use them), TF preprocessing
of both sides (graph mode, inside tf.data), conversion of Python values for the
inference API, host postprocessing, the decoding of a token target, and the
names of its model pieces (an encoder adapter for inputs, a head for dense
targets). Adding a modality is one file that exports such an object plus one
line in `ofa_jax/modalities/__init__.py` (or `modalities.register` from outside).

Token modalities (`TokenModality`: TEXT, BOX, CATEGORY, STRUCT, PHONE) return
`TokenSlotOutput`; the plan merges adjacent token slots into one run (OFASys's
group_map). Dense modalities (`DenseModality`: IMAGE, AUDIO, VIDEO, MOTION)
return `DenseSlotOutput` and lay it out in their own streams.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from ofa_jax.modalities.spec import AttrSpec, DecodingKind, RunOption, Stream


@dataclasses.dataclass(frozen=True)
class SlotContext:
  """What a modality needs to know to preprocess one slot of one example.

  Attributes:
    task: the task name (for error messages).
    slot_name: the data field the slot reads (for error messages), may be None.
    attrs: the slot's attributes from the instruction (e.g. {"mask_ratio": 0.3}).
    vocab: the `ofa_jax.vocab.OFAVocabulary` of the task (token modalities).
    options: task-level modality options given to register_task (e.g.
      {"image_size": 256, "max_image_size": 512, "num_bins": 1000}).
    is_training: True for the train split (masking / noise / augmentation apply).
    seed: a stateless seed, int32 [2], unique to (example, slot); None when the
      modality must be deterministic.
    geometry: float32 [6] geometry of the example's first geometry-giving input
      slot (an image: see image.IMAGE_GEOMETRY), for BOX co-transformation;
      None without one.
  """

  task: str
  slot_name: Optional[str]
  attrs: Mapping[str, Any]
  vocab: Any
  options: Mapping[str, Any]
  is_training: bool
  seed: Optional[tf.Tensor] = None
  geometry: Optional[tf.Tensor] = None

  def where(self) -> str:
    """`task 'x', slot 'y'` for error messages."""
    return f"task {self.task!r}, slot {self.slot_name!r}"


class TokenSlotOutput(NamedTuple):
  """Ids of the one id space and the TokenKind of each (same length)."""

  tokens: tf.Tensor  # int32 [n]
  kinds: tf.Tensor  # int32 [n]
  # Number of values clipped or otherwise repaired (e.g. boxes outside the image);
  # the plan adds it to the task's counters.
  num_clipped: tf.Tensor = tf.constant(0, tf.int32)


class DenseSlotOutput(NamedTuple):
  """A dense stream for one slot, with its mask and a validity flag.

  `valid` is False when the value could not be decoded (corrupt image, empty audio,
  too-short motion clip): the plan drops the example and counts it.
  """

  values: tf.Tensor
  mask: tf.Tensor
  valid: tf.Tensor  # bool []
  geometry: Optional[tf.Tensor] = None  # IMAGE only: float32 [6]
  # Frames cut off (audio past max_frames, motion cropped): counted by the plan.
  num_clipped: tf.Tensor = tf.constant(0, tf.int32)




# (dense slot output, encoder text tokens before it, its rank among non-token slots)
Placed = tuple[DenseSlotOutput, tf.Tensor, int]


class Modality:
  """One slot type. Subclasses set the class attributes and the preprocessing.

  Class attributes:
    name: the slot type as written in instructions (e.g. "IMAGE"); the registry
      key of the object.
    token_based: True when values become ids of the one token space.
    attributes: the slot attributes its preprocessing reads (the parser accepts
      these, plus the generic ones of `instructions.schema`).
    adapter: the model-registry key of the encoder adapter that consumes its
      input streams (None: inputs of this type cannot reach the model).
    head: the model-registry key of the head that produces its dense target
      (None: a dense target of this type cannot be trained).
    run_options: task options a trained model depends on (recorded in the run
      directory, restored by `Generalist.load`, flags of the inference CLI).
    file_suffixes: file name endings (lower case) of the files a value of this
      type may be read from: the inference CLI fills such a slot from a
      directory of these files.
    decoding_kinds: the decoding kinds its targets may take (`DecodingSpec.kind`).
  """

  name: str = ""
  token_based: bool = True
  attributes: tuple[AttrSpec, ...] = ()
  adapter: Optional[str] = None
  head: Optional[str] = None
  run_options: tuple[RunOption, ...] = ()
  file_suffixes: tuple[str, ...] = ()
  decoding_kinds: tuple[DecodingKind, ...] = ()

  # ---- TF preprocessing (graph mode) -----------------------------------------
  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext
                       ) -> TokenSlotOutput | DenseSlotOutput:
    raise NotImplementedError(f"{self.name}: preprocess_input")

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext
                        ) -> TokenSlotOutput | DenseSlotOutput:
    raise NotImplementedError(f"{self.name}: preprocess_target")

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> Any:
    """Host side: decoded ids / generated values -> a Python value."""
    raise NotImplementedError(f"{self.name}: postprocess")

  def prediction_views(self, value: Any) -> dict[str, Any]:
    """Typed views (`results.Result` fields) of any prediction whose value this
    modality recognizes, whatever its decoding kind ({}: none)."""
    del value
    return {}

  # ---- the inference API -----------------------------------------------------
  def to_tensor(self, value: Any, where: str) -> tf.Tensor:
    """A Python value of a slot (as a user passes it) -> the tensor a source
    example would hold. Strings and numbers convert as tf.constant does."""
    if isinstance(value, (str, bytes)):
      return tf.constant(value)
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, str) for v in value):
      return tf.constant(list(value), tf.string)
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
      arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu":
      arr = arr.astype(np.int32)
    elif arr.dtype.kind in "OUS":
      return tf.constant(arr.astype(str).tolist(), tf.string)
    return tf.constant(arr)

  def placeholder(self, grouped: bool, labels: Optional[Sequence[str]]
                  ) -> tf.Tensor:
    """The value of a target field the user cannot give (it is predicted)."""
    if grouped:
      return tf.zeros([0], tf.string)
    return tf.constant(labels[0] if labels else "")

  def explain_invalid(self, value: tf.Tensor, ctx: SlotContext
                      ) -> Optional[str]:
    """Why `value` (an input as `to_tensor` made it) cannot be preprocessed,
    or None when this modality sees nothing wrong with it.

    Why: inside tf.data an undecodable value only yields `valid=False` (the
    plan drops and counts the example), which says neither which example nor
    why. The inference API asks this, eagerly and only for the examples that
    were dropped, to tell the user e.g. "not a JPEG/PNG/GIF/BMP image" next to
    the file's name. Default: no explanation (the caller says "dropped").
    """
    del value, ctx
    return None

  @property
  def modality(self) -> str:
    """The slot type (the processors' former attribute of the same name)."""
    return self.name

  def where(self) -> str:
    return f"{self.name} modality"


class TokenModality(Modality):
  """A modality whose values become tokens; it decides how its target decodes.

  Class attributes:
    solo_decoding: (kind, DecodingSpec defaults) when it is the one trained
      target slot, e.g. ("box", {"max_len": 4, "min_len": 4}).
    mixed_decoding: the decoding kind when its slots are trained together with
      other token slots (detection's `[BOX][TEXT]` groups), None if it adds
      nothing to free text.
    mixed_token_kind: the TokenKind every trained target token takes then.
  """

  token_based = True
  solo_decoding: tuple[str, Mapping[str, Any]] = ("text", {})
  mixed_decoding: Optional[str] = None
  mixed_token_kind: Optional[int] = None
  # True when the slot's values live in the frame of the example's first input
  # image (BOX): the slot then reads that slot's shared attributes.
  uses_geometry: bool = False

  def is_closed_set(self, slot: Any) -> bool:
    """True when a target slot decodes under the trie of a label set."""
    del slot
    return False

  def postprocess_prediction(self, text: str, plan: Any,
                             example: Optional[Mapping[str, Any]], kind: str
                             ) -> Any:
    """Decoded text (prompt removed) -> the task's value; `kind` is the decoding
    kind this modality chose (its solo or mixed one)."""
    del plan, example, kind
    return text


class DenseModality(Modality):
  """A modality with its own streams, laid out next to the tokens.

  Class attributes:
    input_streams / target_streams: the task features of each side; the first
      of each is the primary stream, whose name is its `sequence_length` key.
    max_input_slots: input slots of this type one example may hold (None: any).
    length_options: sequence_length key -> the options it sets unless the task
      sets them (e.g. {"audio": ("audio_max_frames",)}).
    provides_geometry / shared_attrs: the first input slot of such a modality
      gives the example's geometry, and its `shared_attrs` reach the token slots
      that use it (BOX co-transformation).
    input_only: a target of this type is refused at parse-free registration.
  """

  token_based = False
  input_streams: tuple[Stream, ...] = ()
  target_streams: tuple[Stream, ...] = ()
  max_input_slots: Optional[int] = 1
  length_options: Mapping[str, tuple[str, ...]] = {}
  provides_geometry: bool = False
  shared_attrs: tuple[str, ...] = ()
  input_only: bool = False

  @property
  def streams(self) -> tuple[Stream, ...]:
    return self.input_streams + self.target_streams

  @property
  def decoding_kinds(self) -> tuple[DecodingKind, ...]:
    """A dense target comes from its head, not from the token decoder."""
    if self.input_only:
      return ()
    return (DecodingKind(f"{self.name.lower()}_frames", token_decoder=False),)

  def absent_dims(self, stream: Stream, options: Mapping[str, Any]
                  ) -> tuple[int, ...]:
    """Trailing dims of a primary stream's value when a task does not use it
    (a present value of the same task must have the same ones to batch)."""
    raise NotImplementedError(f"{self.name}: absent_dims({stream.name})")

  def effective_options(self, options: dict[str, Any]) -> dict[str, Any]:
    """Options completed once the sequence lengths are known (default: as is)."""
    return options

  def empty_features(self, options: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """Every stream of this modality, absent: zero-length, right rank and dims."""
    out = {}
    primaries = {s.name for s in (self.input_streams[:1] + self.target_streams[:1])}
    for s in self.streams:
      if s.name in primaries:
        shape = [0] * s.padded_axes + list(self.absent_dims(s, options))
      else:
        shape = [s.empty_length] + list(s.trailing)
      out[s.name] = tf.zeros(shape, tf.float32 if s.is_float else tf.int32)
    return out

  def layout_inputs(self, placed: Sequence[Placed]) -> dict[str, tf.Tensor]:
    """The input streams of an example's slots of this type (instruction order).

    Default: one slot per example, its values, mask, text offset [1] and slot
    rank [1] in the four input streams, in that order.
    """
    if len(placed) != 1:
      raise ValueError(f"{self.where()}: {len(placed)} input slots; the layout "
                       "carries one per example")
    (res, offset, rank), = placed
    values, mask, offset_s, rank_s = self.input_streams[:4]
    return {values.name: tf.cast(res.values, tf.float32),
            mask.name: tf.reshape(tf.cast(res.mask, tf.int32), [-1]),
            offset_s.name: tf.reshape(offset, [1]),
            rank_s.name: tf.constant([rank], tf.int32)}

  def layout_target(self, res: DenseSlotOutput) -> dict[str, tf.Tensor]:
    """The target streams of a dense target slot: values and mask."""
    values, mask = self.target_streams[:2]
    return {values.name: tf.cast(res.values, tf.float32),
            mask.name: tf.reshape(tf.cast(res.mask, tf.int32), [-1])}

  def target_placeholder_tokens(self, res: DenseSlotOutput, ctx: SlotContext
                                ) -> Optional[TokenSlotOutput]:
    """The ids a dense target occupies in the `targets` stream, or None.

    Why: a target that a frozen tokenizer head turns into ids (IMAGE through its
    VQGAN: OFASys's `update_sample`) is trained by the decoder's cross entropy
    like text, so its ids need positions, kinds and loss in the token stream
    before the ids are known. The plan writes these placeholders (with loss);
    the head overwrites them inside the jitted step, or an offline cache
    (`tools/tokenize_images.py`) has already. None: the target trains a head of
    its own and the token stream carries no loss.
    """
    del res, ctx
    return None

  def model_problems(self, slot: Any, options: Mapping[str, Any],
                     model_config: Any) -> list[str]:
    """Why a model config cannot train this (dense) slot beyond missing pieces:
    e.g. a code grid that differs from the head's ([]: none)."""
    del slot, options, model_config
    return []

  def placements(self, example: Mapping[str, Any]
                 ) -> list[tuple[int, int, str, str]]:
    """(text offset, slot rank, modality name, description) of each present
    input slot of a host-side task example (tools, readable encoder inputs)."""
    values, mask, offset, rank = self.input_streams[:4]
    if values.name not in example:
      return []
    m = np.asarray(example[mask.name]).reshape(-1)
    if not m.size or m.sum() == 0:
      return []
    return [(int(np.asarray(example[offset.name]).reshape(-1)[0]),
             int(np.asarray(example[rank.name]).reshape(-1)[0]), self.name,
             f"{self.name} frames={int(m.sum())}/{m.size} "
             f"{_stats(np.asarray(example[values.name]))}")]

  def target_decoding(self, template: Any, options: Mapping[str, Any]
                      ) -> tuple[str, dict[str, Any]]:
    """(kind, DecodingSpec defaults) of a task whose target is of this type."""
    return self.decoding_kinds[0].name, {"beam_size": 1}


def single_slot_streams(prefix: str, rank: int) -> tuple[Stream, ...]:
  """The four input streams of a one-slot-per-example dense modality."""
  return (Stream(prefix, "float32", rank, prefix),
          Stream(f"{prefix}_mask", "int32", 1, prefix),
          Stream(f"{prefix}_text_offset", "int32", 1, 1, empty_length=1),
          Stream(f"{prefix}_slot_rank", "int32", 1, 1, empty_length=1))


def dense_target_streams(name: str, rank: int) -> tuple[Stream, ...]:
  """A dense target's values and frame mask."""
  return (Stream(name, "float32", rank, name),
          Stream(f"{name}_mask", "int32", 1, name))


def _stats(x: np.ndarray) -> str:
  if x.size == 0:
    return f"{x.dtype}{list(x.shape)} (empty)"
  return (f"{x.dtype}{list(x.shape)} min={x.min():.3g} max={x.max():.3g} "
          f"mean={x.mean():.3g}")
