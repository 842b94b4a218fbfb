"""CATEGORY: a label string -> the tokens of the label; closed sets -> a prefix trie.

A category is text with a known label set. Preprocessing is TEXT's (uncased,
no_punctuation, max_length; no masking or noise: a label is never noised). With
`closed_set`, the label set (task option `closed_set=[...]` or `labels=[...]`)
becomes a `trie.Trie` (`label_trie` / `slot_trie`) that constrained decoding and
all-candidate scoring use, and a training label outside the set is an error naming
the task and the slot (it could never be produced, so it would train nonsense).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from ofa_jax.modalities.base import SlotContext, TokenSlotOutput
from ofa_jax.modalities.options import slot_option
from ofa_jax.modalities.text import (CLOSED_SET, MAX_LENGTH, NO_PUNCTUATION,
                                     UNCASED, TextProcessor, encode_text,
                                     max_length_option, require_vocab,
                                     token_kinds, _normalize_label)


class CategoryProcessor(TextProcessor):
  """The CATEGORY modality (see the module docstring)."""

  name = "CATEGORY"
  attributes = (UNCASED, NO_PUNCTUATION, MAX_LENGTH, CLOSED_SET)

  def is_closed_set(self, slot) -> bool:
    del slot  # a category target always decodes under its label set
    return True

  def _tokens(self, value: Any, ctx: SlotContext) -> TokenSlotOutput:
    vocab = require_vocab(ctx)
    text = self._normalized(value, ctx)
    labels = self.labels(ctx)
    if labels is not None and slot_option(ctx, "closed_set", (), False, bool):
      uncased = slot_option(ctx, "uncased", (), False, bool)
      no_punct = slot_option(ctx, "no_punctuation", (), False, bool)
      allowed = tf.constant([_normalize_label(x, uncased, no_punct) for x in labels])
      check = tf.debugging.Assert(
          tf.reduce_any(tf.equal(text, allowed)),
          [f"{ctx.where()}: label not in the closed set:", text])
      with tf.control_dependencies([check]):
        text = tf.identity(text)
    ids = encode_text(vocab, text, max_length_option(ctx))
    return TokenSlotOutput(ids, token_kinds(vocab, ids))

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    return self._tokens(value, ctx)

  # The same tokens on either side: no masking or noise applies to this modality.
  preprocess_target = preprocess_input


CATEGORY = CategoryProcessor()
