"""The one feature layout shared by every task, the feature converter and the model.

Why one layout: any two tasks must mix in one SeqIO mixture, so every task emits the
same set of features, whatever modalities its instruction names. A modality that a
task does not use is present with zero length or with a zero mask: never silently
zero-filled *data*, only explicit "absent" streams whose mask says so.

There are two levels, as in SeqIO:

* **Task features** (what ``plan.py`` emits, per example, before batching). Token
  streams have variable length; dense streams have fixed per-example shapes set by
  the task's modality options and by the ``sequence_length`` dict.
* **Model features** (what ``OFAFeatureConverter`` emits, batched, static shapes).

The encoder sequence follows the instruction order. The data side cannot know how
many encoder positions a non-token slot occupies (that depends on the model's
adapter: ResNet stride, audio subsampling), so each non-token input slot carries
``*_text_offset`` (how many encoder text tokens precede it) and ``*_slot_rank`` (its
index among the non-token slots of the instruction). The model interleaves the
adapter outputs with the text tokens from these two numbers (see
``ofa_jax/model/layout.py``), giving the instruction order with static shapes.
"""

from __future__ import annotations

import enum
import zlib
from typing import Mapping


class TokenKind(enum.IntEnum):
  """What a target token is; decides the id range it may take (loss and decoding)."""

  PAD = 0
  TEXT = 1  # text pieces, specials (<s>, </s>, <unk>, <mask>) and phone pieces
  BIN = 2  # <bin_k> location tokens (boxes)
  CODE = 3  # <code_k> image codes (VQ)
  # A token of a target that mixes boxes with text (detection's interleaved
  # `[BOX][TEXT]` groups): where a box starts, a label goes on or the answer
  # ends is the model's own choice, so its softmax spans text AND bins (OFA
  # trains detection over the whole vocabulary).
  TEXT_OR_BIN = 4


class Modality(str, enum.Enum):
  """The 9 OFASys slot types."""

  TEXT = "TEXT"
  IMAGE = "IMAGE"
  BOX = "BOX"
  AUDIO = "AUDIO"
  PHONE = "PHONE"
  VIDEO = "VIDEO"
  MOTION = "MOTION"
  STRUCT = "STRUCT"
  CATEGORY = "CATEGORY"


# Modalities whose values become tokens of the one id space (merged into one run,
# as OFASys's group_map does). The others are dense streams with their own adapter.
TOKEN_MODALITIES = frozenset({Modality.TEXT, Modality.BOX, Modality.PHONE,
                              Modality.STRUCT, Modality.CATEGORY})

# ---------------------------------------------------------------------------
# Task features (per example). Shapes: L* variable, others fixed.
# ---------------------------------------------------------------------------
INPUTS = "inputs"                      # int32 [Li]  encoder tokens, instruction order
TARGETS = "targets"                    # int32 [Lo]  decoder targets, ends with </s>
TARGET_LOSS_MASK = "target_loss_mask"  # int32 [Lo]  1 where the token is trained
TARGET_KINDS = "target_kinds"          # int32 [Lo]  TokenKind of each target token
# The decoder-input version of `targets` (same length, ends with </s>): what the
# converter shifts right into decoder_input_tokens. Equal to `targets` unless a
# target TEXT slot sets `noise_ratio`: OFA trains on clean targets but feeds noised
# tokens as the decoder inputs (prev_output_tokens), on the train split only.
TARGET_INPUTS = "target_inputs"        # int32 [Lo]
SAMPLE_WEIGHT = "sample_weight"        # float32 []  OFA's `conf` (1.0 by default)
TASK_ID = "task_id"                    # int32 []    task_id_of(task name)

IMAGES = "images"                      # float32 [Ni, S, S, 3] normalized pixels
IMAGE_MASK = "image_mask"              # int32 [Ni] 1 = image present
IMAGE_TEXT_OFFSET = "image_text_offset"  # int32 [Ni]
IMAGE_SLOT_RANK = "image_slot_rank"    # int32 [Ni]
# How each input image was transformed: (orig_h, orig_w, scale_y, scale_x, offset_y,
# offset_x), so processed = orig * scale + offset. Boxes are co-transformed with it,
# and predicted boxes are mapped back to original pixels with it.
IMAGE_GEOMETRY = "image_geometry"      # float32 [Ni, 6]

AUDIO = "audio"                        # float32 [Ta, 80] log-mel fbank
AUDIO_MASK = "audio_mask"              # int32 [Ta] 1 = real frame
AUDIO_TEXT_OFFSET = "audio_text_offset"  # int32 [1]
AUDIO_SLOT_RANK = "audio_slot_rank"    # int32 [1]

VIDEO = "video"                        # float32 [F, S, S, 3] frames
VIDEO_MASK = "video_mask"              # int32 [F] 1 = real frame
VIDEO_TEXT_OFFSET = "video_text_offset"  # int32 [1]
VIDEO_SLOT_RANK = "video_slot_rank"    # int32 [1]

MOTION = "motion"                      # float32 [Tm, Dm] joint features
MOTION_MASK = "motion_mask"            # int32 [Tm]
MOTION_TEXT_OFFSET = "motion_text_offset"  # int32 [1]
MOTION_SLOT_RANK = "motion_slot_rank"  # int32 [1]

TARGET_IMAGE = "target_image"          # float32 [St, St, 3] in [-1, 1] (VQ input)
TARGET_IMAGE_MASK = "target_image_mask"  # int32 [1]
TARGET_AUDIO = "target_audio"          # float32 [Tta, 80] fbank frames (TTS)
TARGET_AUDIO_MASK = "target_audio_mask"  # int32 [Tta]
TARGET_MOTION = "target_motion"        # float32 [Ttm, Dm]
TARGET_MOTION_MASK = "target_motion_mask"  # int32 [Ttm]

# Keys of the `sequence_length` / task_feature_lengths dict. Token streams are
# lengths; the dense ones are counts of images / frames. A mixture without audio
# sets "audio": 0 and pays nothing for it.
LENGTH_KEYS = ("inputs", "targets", "images", "audio", "video", "motion",
               "target_image", "target_audio", "target_motion")

# ---------------------------------------------------------------------------
# Model features (batched, static shapes), produced by OFAFeatureConverter.
# Dense streams keep their task-feature names with a leading batch axis.
# ---------------------------------------------------------------------------
ENCODER_INPUT_TOKENS = "encoder_input_tokens"      # int32 [B, Li] (pad = 1)
DECODER_INPUT_TOKENS = "decoder_input_tokens"      # int32 [B, Lo] targets shifted right, <s>=0 first
DECODER_TARGET_TOKENS = "decoder_target_tokens"    # int32 [B, Lo] (pad = 1)
DECODER_LOSS_WEIGHTS = "decoder_loss_weights"      # float32 [B, Lo]
DECODER_TARGET_KINDS = "decoder_target_kinds"      # int32 [B, Lo]
# 1 on the leading forced decoder prompt (no_loss target slots and untrained plain
# target text before the first trained token), 0 elsewhere. Explicit because
# `decoder_loss_weights` also folds in the sample weight: an example of weight 0
# must not read as "all prompt".
DECODER_PROMPT_MASK = "decoder_prompt_mask"        # int32 [B, Lo]
# With packing (token-only mixtures): *_segment_ids and *_positions, int32.
ENCODER_SEGMENT_IDS = "encoder_segment_ids"
ENCODER_POSITIONS = "encoder_positions"
DECODER_SEGMENT_IDS = "decoder_segment_ids"
DECODER_POSITIONS = "decoder_positions"

DENSE_STREAMS: Mapping[str, tuple[str, ...]] = {
    # stream -> its companion features
    IMAGES: (IMAGE_MASK, IMAGE_TEXT_OFFSET, IMAGE_SLOT_RANK, IMAGE_GEOMETRY),
    AUDIO: (AUDIO_MASK, AUDIO_TEXT_OFFSET, AUDIO_SLOT_RANK),
    VIDEO: (VIDEO_MASK, VIDEO_TEXT_OFFSET, VIDEO_SLOT_RANK),
    MOTION: (MOTION_MASK, MOTION_TEXT_OFFSET, MOTION_SLOT_RANK),
    TARGET_IMAGE: (TARGET_IMAGE_MASK,),
    TARGET_AUDIO: (TARGET_AUDIO_MASK,),
    TARGET_MOTION: (TARGET_MOTION_MASK,),
}

# Special ids (OFA / fairseq dictionary order).
BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3


def task_id_of(task_name: str) -> int:
  """A stable, process-independent id of a task (for per-task metrics in jit)."""
  return zlib.crc32(task_name.encode("utf-8")) & 0x7FFFFFFF
