"""The built-in modalities' names and stream names, for tests.

Why here: `ofa_jax.features` keeps only modality-independent names; the stream
names belong to the modality objects. Tests may name particular modalities, so
they read the names from here; each is checked against its modality's object.
"""

from __future__ import annotations

from ofa_jax import modalities
from ofa_jax.modalities.image_features import (IMAGE_GEOMETRY, IMAGE_MASK,
                                               IMAGE_SLOT_RANK,
                                               IMAGE_TEXT_OFFSET, IMAGES,
                                               TARGET_IMAGE, TARGET_IMAGE_MASK)


class M:
  """The 9 built-in slot types (registered names are plain strings)."""

  TEXT = "TEXT"
  IMAGE = "IMAGE"
  BOX = "BOX"
  AUDIO = "AUDIO"
  PHONE = "PHONE"
  VIDEO = "VIDEO"
  MOTION = "MOTION"
  STRUCT = "STRUCT"
  CATEGORY = "CATEGORY"


BUILTIN = tuple(v for k, v in vars(M).items() if k.isupper())
TOKEN_MODALITIES = frozenset(n for n in BUILTIN if modalities.get(n).token_based)

AUDIO = "audio"
AUDIO_MASK = "audio_mask"
AUDIO_TEXT_OFFSET = "audio_text_offset"
AUDIO_SLOT_RANK = "audio_slot_rank"
VIDEO = "video"
VIDEO_MASK = "video_mask"
VIDEO_TEXT_OFFSET = "video_text_offset"
VIDEO_SLOT_RANK = "video_slot_rank"
MOTION = "motion"
MOTION_MASK = "motion_mask"
MOTION_TEXT_OFFSET = "motion_text_offset"
MOTION_SLOT_RANK = "motion_slot_rank"
TARGET_AUDIO = "target_audio"
TARGET_AUDIO_MASK = "target_audio_mask"
TARGET_MOTION = "target_motion"
TARGET_MOTION_MASK = "target_motion_mask"

# stream -> its companions, as the modality objects declare them.
DENSE_STREAMS = {side[0].name: tuple(s.name for s in side[1:])
                 for m in modalities.dense_modalities()
                 for side in (m.input_streams, m.target_streams) if side}
LENGTH_KEYS = modalities.length_keys()

__all__ = ["AUDIO", "IMAGES", "IMAGE_GEOMETRY", "IMAGE_MASK", "IMAGE_SLOT_RANK",
           "IMAGE_TEXT_OFFSET", "TARGET_IMAGE", "TARGET_IMAGE_MASK", "M"]
