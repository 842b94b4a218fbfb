"""TEXT: tokenize, normalize, truncate, and BART-style noising for infilling.

Options (slot attribute, else task option, else default):

  uncased               lower-case (Unicode) before tokenizing
  no_punctuation        Unicode punctuation (except `_`) becomes a space
  max_length=N          keep the first N tokens
  mask_ratio=p          input side, train split only: BART whole-word span masking.
                        ceil(p * words) words are masked in spans whose lengths are
                        Poisson(3) (at least 1 word), starting at distinct random
                        words; each maximal run of masked tokens becomes ONE <mask>.
  noise_ratio=p         input side, train split only: each token is replaced with
                        probability p by a random text token (ids [4, <mask>)).

Randomness is stateless, drawn from `ctx.seed` only: the same seed gives the same
mask, eagerly and inside tf.data. Masking and noise without a seed is an error.

`noise_ratio` on a TARGET slot (OFA's summarization): OFA noises the decoder *inputs*
while the targets stay clean. `preprocess_target` therefore returns clean ids, and the
plan asks `noise_target_inputs` for the slot's part of the `target_inputs` feature
(the stream the feature converter shifts into the decoder inputs), train split only.

The helpers at the top (`slot_option`, `token_kinds`, `normalize_text`,
`encode_text`) are shared by the other token modalities.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from ofa_jax import features
from ofa_jax import trie as trie_lib
from ofa_jax.modalities.base import SlotContext, TokenModality, TokenSlotOutput
from ofa_jax.modalities.options import slot_option
from ofa_jax.modalities.spec import (BOTH_SIDES, SOURCE_ONLY, TARGET_ONLY,
                                     AttrSpec)

POISSON_LAMBDA = 3.0

# Attributes shared by the text-like modalities (TEXT, CATEGORY, STRUCT).
UNCASED = AttrSpec("uncased", "flag", BOTH_SIDES, doc="lower-case the value")
NO_PUNCTUATION = AttrSpec("no_punctuation", "flag", BOTH_SIDES,
                          doc="strip punctuation")
MAX_LENGTH = AttrSpec("max_length", "int", BOTH_SIDES, doc="truncate tokens")
CLOSED_SET = AttrSpec("closed_set", "flag", TARGET_ONLY,
                      doc="decode under a prefix trie of the answer set")


# ---------------------------------------------------------------------------
# Shared helpers of the token modalities
# ---------------------------------------------------------------------------
def ratio_option(ctx: SlotContext, attr: str) -> float:
  p = slot_option(ctx, attr, (), 0.0, float)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"{ctx.where()}: {attr} must be in [0, 1], got {p!r}")
  return p


def max_length_option(ctx: SlotContext) -> Optional[int]:
  n = slot_option(ctx, "max_length", (), None, int)
  if n is not None and n < 1:
    raise ValueError(f"{ctx.where()}: max_length must be >= 1, got {n}")
  return n


def require_vocab(ctx: SlotContext | Mapping[str, Any]):
  vocab = ctx.get("vocab") if isinstance(ctx, Mapping) else ctx.vocab
  if vocab is None:
    where = ctx.where() if isinstance(ctx, SlotContext) else "postprocess"
    raise ValueError(f"{where}: a token modality needs ctx.vocab (an OFAVocabulary)")
  return vocab


def string_scalar(value: Any, ctx: SlotContext) -> tf.Tensor:
  value = tf.convert_to_tensor(value)
  if value.dtype != tf.string or value.shape.rank != 0:
    raise ValueError(f"{ctx.where()}: expected a string scalar, got {value.dtype.name} "
                     f"with shape {value.shape}")
  return value


def token_kinds(vocab, ids: tf.Tensor) -> tf.Tensor:
  """TokenKind of each id: BIN / CODE in their ranges, TEXT otherwise."""
  ids = tf.cast(ids, tf.int32)
  return tf.where(vocab.is_bin(ids), int(features.TokenKind.BIN),
                  tf.where(vocab.is_code(ids), int(features.TokenKind.CODE),
                           int(features.TokenKind.TEXT)))


def normalize_text(text: tf.Tensor, uncased: bool, no_punctuation: bool) -> tf.Tensor:
  """Lower-casing and punctuation removal, then whitespace collapsed (graph mode)."""
  if uncased:
    text = tf.strings.lower(text, encoding="utf-8")
  if no_punctuation:
    text = tf.strings.regex_replace(text, r"[^\PP_]", " ")
  text = tf.strings.regex_replace(text, r"\s+", " ")
  return tf.strings.strip(text)


def encode_text(vocab, text: tf.Tensor, max_length: Optional[int]) -> tf.Tensor:
  ids = tf.cast(vocab.encode_tf(text), tf.int32)
  ids = tf.reshape(ids, [-1])
  return ids[:max_length] if max_length else ids


def _seed(ctx: SlotContext, k: int) -> tf.Tensor:
  if ctx.seed is None:
    raise ValueError(f"{ctx.where()}: masking / noise needs a stateless seed (ctx.seed)")
  seed = tf.cast(tf.convert_to_tensor(ctx.seed), tf.int32)
  return tf.random.experimental.stateless_fold_in(seed, k)


# ---------------------------------------------------------------------------
# Noising (pure functions of ids and a seed)
# ---------------------------------------------------------------------------
def span_mask_tokens(ids: tf.Tensor, word_start: tf.Tensor, mask_id: int, ratio: float,
                     seed: tf.Tensor, poisson_lambda: float = POISSON_LAMBDA) -> tf.Tensor:
  """BART whole-word span masking; each run of masked tokens -> one `mask_id`.

  Args:
    ids: int32 [n] token ids.
    word_start: bool [n], True where a token begins a word (the first always does).
    mask_id: the id that replaces each masked run.
    ratio: fraction of words to mask (ceil).
    seed: int32 [2] stateless seed.
    poisson_lambda: mean span length in words.
  """
  n = tf.size(ids)
  word_start = tf.logical_or(word_start, tf.range(n) == 0)
  word_id = tf.cumsum(tf.cast(word_start, tf.int32)) - 1
  num_words = tf.reduce_sum(tf.cast(word_start, tf.int32))
  to_mask = tf.cast(tf.math.ceil(tf.cast(num_words, tf.float32) * ratio), tf.int32)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  lengths = tf.random.stateless_poisson([num_words], seeds[0], poisson_lambda, tf.int32)
  lengths = tf.maximum(lengths, 1)
  before = tf.cumsum(lengths, exclusive=True)
  lengths = tf.where(before < to_mask, tf.minimum(lengths, to_mask - before), 0)
  order = tf.argsort(tf.random.stateless_uniform([num_words], seeds[1]))
  starts = order  # span i starts at word order[i]: distinct random words
  ends = tf.minimum(starts + lengths, num_words)
  delta = tf.zeros([num_words + 1], tf.int32)
  delta = tf.tensor_scatter_nd_add(delta, starts[:, None], tf.cast(lengths > 0, tf.int32))
  delta = tf.tensor_scatter_nd_add(delta, ends[:, None], -tf.cast(lengths > 0, tf.int32))
  masked_word = tf.cumsum(delta)[:num_words] > 0
  masked = tf.gather(masked_word, word_id)
  prev_masked = tf.concat([[False], masked[:-1]], 0)
  keep = tf.logical_or(tf.logical_not(masked), tf.logical_not(prev_masked))
  out = tf.where(masked, mask_id, ids)
  return tf.boolean_mask(out, keep)


def noise_tokens(ids: tf.Tensor, ratio: float, low: int, high: int,
                 seed: tf.Tensor) -> tf.Tensor:
  """Each token replaced with probability `ratio` by a uniform id in [low, high)."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  hit = tf.random.stateless_uniform(tf.shape(ids), seeds[0]) < ratio
  rand = tf.random.stateless_uniform(tf.shape(ids), seeds[1], low, high, tf.int32)
  return tf.where(hit, rand, ids)


def word_starts(vocab, ids: tf.Tensor) -> tf.Tensor:
  table = tf.constant(vocab.word_start_table())
  return tf.gather(table, ids)


# ---------------------------------------------------------------------------
# The processor
# ---------------------------------------------------------------------------
class TextProcessor(TokenModality):
  """The TEXT modality (see the module docstring for the options)."""

  name = "TEXT"
  attributes = (
      UNCASED, NO_PUNCTUATION, MAX_LENGTH, CLOSED_SET,
      AttrSpec("mask_ratio", "ratio", SOURCE_ONLY, doc="BART span masking"),
      AttrSpec("noise_ratio", "ratio", BOTH_SIDES,
               doc="replace tokens with random text tokens"))

  def is_closed_set(self, slot) -> bool:
    return slot.has("closed_set")

  def _normalized(self, value: Any, ctx: SlotContext) -> tf.Tensor:
    return normalize_text(string_scalar(value, ctx),
                          slot_option(ctx, "uncased", (), False, bool),
                          slot_option(ctx, "no_punctuation", (), False, bool))

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    vocab = require_vocab(ctx)
    ids = encode_text(vocab, self._normalized(value, ctx), max_length_option(ctx))
    mask_ratio = ratio_option(ctx, "mask_ratio")
    noise_ratio = ratio_option(ctx, "noise_ratio")
    if ctx.is_training and mask_ratio > 0:
      ids = span_mask_tokens(ids, word_starts(vocab, ids), vocab.mask_id, mask_ratio,
                             _seed(ctx, 11))
    if ctx.is_training and noise_ratio > 0:
      ids = noise_tokens(ids, noise_ratio, 4, vocab.mask_id, _seed(ctx, 12))
    return TokenSlotOutput(ids, token_kinds(vocab, ids))

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    vocab = require_vocab(ctx)
    ratio_option(ctx, "noise_ratio")  # validated here; applied by the plan
    if ctx.attrs and ctx.attrs.get("mask_ratio"):
      raise ValueError(f"{ctx.where()}: mask_ratio applies to input slots only")
    ids = encode_text(vocab, self._normalized(value, ctx), max_length_option(ctx))
    return TokenSlotOutput(ids, token_kinds(vocab, ids))

  def noise_target_inputs(self, ids: tf.Tensor, ctx: SlotContext) -> tf.Tensor:
    """The decoder-input version of a target slot's clean ids.

    With `noise_ratio=p` on a TEXT target, in training each token is replaced with
    probability p by a random text token (OFA's summarization feeds such noised
    prev_output_tokens while the loss sees the clean targets). Unchanged otherwise,
    and always unchanged for CATEGORY (a label is never noised).
    """
    if self.name != "TEXT" or not ctx.is_training:
      return ids
    ratio = ratio_option(ctx, "noise_ratio")
    if ratio <= 0:
      return ids
    return noise_tokens(ids, ratio, 4, require_vocab(ctx).mask_id, _seed(ctx, 13))

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> str:
    """Ids (numpy; may hold <s>, </s>, padding) -> text, cut at the first </s>."""
    return require_vocab(ctx).decode(np.asarray(tokens).reshape(-1).tolist())

  # ---- closed sets -----------------------------------------------------------
  def labels(self, ctx: SlotContext) -> Optional[list[str]]:
    """The closed label set of the slot (task option `closed_set` or `labels`)."""
    labels = slot_option(ctx, None, ("closed_set", "labels"), None)
    if labels is None:
      return None
    if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
      raise ValueError(f"{ctx.where()}: closed_set / labels must be a list of strings, "
                       f"got {labels!r}")
    return list(labels)

  def label_trie(self, vocab, labels: Sequence[str], uncased: bool = False,
                 no_punctuation: bool = False) -> trie_lib.Trie:
    """Trie of `[bos] + tokens(label) + [eos]`, labels normalized like the slot."""
    if not labels:
      raise ValueError("a closed set needs at least one label")
    normalized = [_normalize_label(x, uncased, no_punctuation) for x in labels]
    return trie_lib.Trie.from_answers(vocab, normalized)

  def slot_trie(self, ctx: SlotContext) -> Optional[trie_lib.Trie]:
    """The slot's trie when it is `closed_set` and its labels are known, else None."""
    if not slot_option(ctx, "closed_set", (), False, bool):
      return None
    labels = self.labels(ctx)
    if labels is None:
      raise ValueError(f"{ctx.where()}: closed_set needs the label set: pass the task "
                       "option closed_set=[...] (or labels=[...])")
    return self.label_trie(require_vocab(ctx), labels,
                           slot_option(ctx, "uncased", (), False, bool),
                           slot_option(ctx, "no_punctuation", (), False, bool))


def _normalize_label(label: str, uncased: bool, no_punctuation: bool) -> str:
  if not isinstance(label, str):
    raise ValueError(f"a label must be a string, got {label!r}")
  with tf.init_scope():  # host-side strings, even when called while tracing
    out = normalize_text(tf.constant(label), uncased, no_punctuation)
    return out.numpy().decode("utf-8")


def num_masked_words(num_words: int, ratio: float) -> int:
  """How many words `span_mask_tokens` masks (before overlaps): ceil(ratio * words)."""
  return int(math.ceil(num_words * ratio))


TEXT = TextProcessor()
