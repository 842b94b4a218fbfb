"""PHONE: a space-separated ARPAbet phone string -> one token per phone.

`"HH AH0 L OW1"` -> stress marks stripped -> `<ph_HH> <ph_AH> <ph_L> <ph_OW>`, one id
each (the default SentencePiece model has the 39 ARPAbet phones as pieces). A phone
outside ARPAbet (e.g. a silence mark `sil`) becomes `<unk>` and is counted in
`num_clipped`. With a vocabulary that has no phone pieces (OFA's GPT-2 BPE) the
cleaned phone string is tokenized as text instead.

Options: `max_length=N` (keep the first N tokens); `mask_ratio=p` (input side, train
split only, stateless from `ctx.seed`): each token is picked with probability p; a
picked token becomes `<mask>` or, with probability 1/2, a random phone (a random text
token under the BPE fallback).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from ofa_jax import vocab as vocab_lib
from ofa_jax.modalities.base import SlotContext, TokenModality, TokenSlotOutput
from ofa_jax.modalities.spec import BOTH_SIDES, SOURCE_ONLY, AttrSpec
from ofa_jax.modalities.text import (max_length_option, ratio_option, require_vocab,
                                     string_scalar, token_kinds)


def _phone_ids(vocab) -> list[int]:
  return [vocab.phone_id(p) for p in vocab_lib.ARPABET_PHONES]


def clean_phones(value: tf.Tensor) -> tf.Tensor:
  """string scalar -> string [n]: split on whitespace, stress removed, upper-cased."""
  phones = tf.strings.split(tf.strings.strip(value))
  phones = tf.strings.regex_replace(phones, r"[0-9]+$", "")
  return tf.strings.upper(phones)


def mask_phones(ids: tf.Tensor, ratio: float, mask_id: int, replacements: tf.Tensor,
                seed: tf.Tensor) -> tf.Tensor:
  """Picked tokens (prob `ratio`) -> `<mask>`, or half of them a random replacement."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  picked = tf.random.stateless_uniform(tf.shape(ids), seeds[0]) < ratio
  use_random = tf.random.stateless_uniform(tf.shape(ids), seeds[1]) < 0.5
  pick = tf.random.stateless_uniform(tf.shape(ids), seeds[2], 0,
                                     tf.size(replacements), tf.int32)
  random_ids = tf.gather(replacements, pick)
  return tf.where(picked, tf.where(use_random, random_ids, mask_id), ids)


class PhoneProcessor(TokenModality):
  """The PHONE modality (see the module docstring)."""

  name = "PHONE"
  attributes = (
      AttrSpec("max_length", "int", BOTH_SIDES, doc="truncate tokens"),
      AttrSpec("mask_ratio", "ratio", SOURCE_ONLY,
               doc="mask or replace phones"))

  def _tokens(self, value: Any, ctx: SlotContext, allow_mask: bool) -> TokenSlotOutput:
    vocab = require_vocab(ctx)
    phones = clean_phones(string_scalar(value, ctx))
    num_unknown = tf.constant(0, tf.int32)
    if vocab.has_phone_tokens:
      names = tf.constant(list(vocab_lib.ARPABET_PHONES))
      table = tf.constant(_phone_ids(vocab), tf.int32)
      hit = tf.equal(phones[:, None], names[None, :])
      known = tf.reduce_any(hit, axis=1)
      ids = tf.where(known, tf.gather(table, tf.argmax(tf.cast(hit, tf.int32), axis=1)),
                     vocab.unk_id)
      num_unknown = tf.reduce_sum(tf.cast(tf.logical_not(known), tf.int32))
      replacements = table
    else:
      ids = tf.reshape(tf.cast(vocab.encode_tf(tf.strings.reduce_join(phones, separator=" ")),
                               tf.int32), [-1])
      replacements = tf.range(4, vocab.mask_id, dtype=tf.int32)
    max_length = max_length_option(ctx)
    if max_length:
      ids = ids[:max_length]
    ratio = ratio_option(ctx, "mask_ratio")
    if allow_mask and ctx.is_training and ratio > 0:
      if ctx.seed is None:
        raise ValueError(f"{ctx.where()}: mask_ratio needs a stateless seed (ctx.seed)")
      seed = tf.random.experimental.stateless_fold_in(
          tf.cast(tf.convert_to_tensor(ctx.seed), tf.int32), 21)
      ids = mask_phones(ids, ratio, vocab.mask_id, replacements, seed)
    return TokenSlotOutput(ids, token_kinds(vocab, ids), num_unknown)

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    return self._tokens(value, ctx, allow_mask=True)

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    if ctx.attrs and ctx.attrs.get("mask_ratio"):
      raise ValueError(f"{ctx.where()}: mask_ratio applies to input slots only")
    return self._tokens(value, ctx, allow_mask=False)

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> str:
    """Ids -> "HH AH L OW" (cut at </s>; specials skipped)."""
    text = require_vocab(ctx).decode(np.asarray(tokens).reshape(-1).tolist())
    return " ".join(re.sub(r"<ph_([A-Z]+)>", r" \1 ", text).split())


PHONE = PhoneProcessor()
