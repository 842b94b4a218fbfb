"""The interface every modality file implements.

Why an interface: `plan.py` knows nothing about pixels, fbanks or bins. It walks the
slots of an instruction and hands each slot's value to the modality that owns it, in
TF graph mode inside tf.data. Adding a modality is one file that implements this
protocol plus one line in `ofa_jax/modalities/__init__.py`.

Token modalities (TEXT, BOX, CATEGORY, STRUCT, PHONE) return `TokenSlotOutput`; the
plan merges adjacent token slots into one run (OFASys's group_map). Dense modalities
(IMAGE, AUDIO, VIDEO, MOTION) return `DenseSlotOutput`; the model embeds them with
their own adapter.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Protocol

import tensorflow as tf

from ofa_jax import features


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
    image_geometry: float32 [6] geometry of the example's first input image
      (see features.IMAGE_GEOMETRY), for BOX co-transformation; None without image.
  """

  task: str
  slot_name: Optional[str]
  attrs: Mapping[str, Any]
  vocab: Any
  options: Mapping[str, Any]
  is_training: bool
  seed: Optional[tf.Tensor] = None
  image_geometry: Optional[tf.Tensor] = None

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


class ModalityProcessor(Protocol):
  """One modality: TF preprocessing for both sides, and host-side postprocessing."""

  modality: features.Modality

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext
                       ) -> TokenSlotOutput | DenseSlotOutput:
    """Encoder side. Graph-mode TF only (it runs inside tf.data)."""

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext
                        ) -> TokenSlotOutput | DenseSlotOutput:
    """Decoder side. Graph-mode TF only."""

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> Any:
    """Host side: decoded ids (numpy) -> a Python value (str, box in pixels, ...)."""
