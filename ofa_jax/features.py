"""The one feature layout shared by every task, the feature converter and the model.

Why one layout: any two tasks must mix in one SeqIO mixture, so every task emits the
same set of features, whatever modalities its instruction names. A modality that a
task does not use is present with zero length or with a zero mask: never silently
zero-filled *data*, only explicit "absent" streams whose mask says so.

There are two levels, as in SeqIO:

* **Task features** (what ``plan.py`` emits, per example, before batching). Token
  streams have variable length; dense streams (declared by the modality objects of
  ``ofa_jax/modalities/``) have fixed per-example shapes set by the task's
  modality options and by the ``sequence_length`` dict.
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

# Dense streams (pixels, fbank frames, motion, and their masks / placement
# features) are declared by their modalities (`ofa_jax/modalities/<name>.py`,
# `Stream`); `ofa_jax.modalities.streams()` and `length_keys()` list them. The
# `sequence_length` dict names only the streams a mixture uses: a missing key
# means the stream is absent (length 0).

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

# Special ids (OFA / fairseq dictionary order).
BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3


def task_id_of(task_name: str) -> int:
  """A stable, process-independent id of a task (for per-task metrics in jit)."""
  return zlib.crc32(task_name.encode("utf-8")) & 0x7FFFFFFF
