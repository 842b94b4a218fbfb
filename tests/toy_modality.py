"""A toy modality added from outside the package: the one file a new modality is.

TOY slots hold a float vector of `toy_dim` numbers per frame, [T, toy_dim]; the
data side pads them to `toy_frames` frames with a mask, and `ToyAdapter` embeds
each frame with a Dense layer. Registered by a test with one line per registry:

  modalities.register("TOY", "tests.toy_modality:TOY")
  model_registry.register_adapter("toy", "tests.toy_modality:ToyAdapter")
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import tensorflow as tf

from ofa_jax.model import adapters
from ofa_jax.modalities.base import (DenseModality, DenseSlotOutput, SlotContext,
                                     single_slot_streams)
from ofa_jax.modalities.options import slot_option
from ofa_jax.modalities.spec import SOURCE_ONLY, AttrSpec, Stream

STREAM = "toy"
DEFAULT_FRAMES = 2
DEFAULT_DIM = 3


class ToyModality(DenseModality):
  """Frames of `toy_dim` floats, padded to `frames` (attribute or option)."""

  name = "TOY"
  attributes = (AttrSpec("frames", "int", SOURCE_ONLY, doc="padded frames"),)
  adapter = STREAM
  input_streams = single_slot_streams(STREAM, 2)
  length_options = {STREAM: ("toy_frames",)}

  def absent_dims(self, stream: Stream, options: Mapping[str, Any]
                  ) -> tuple[int, ...]:
    del stream
    return (int(options.get("toy_dim", DEFAULT_DIM)),)

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext
                       ) -> DenseSlotOutput:
    frames = slot_option(ctx, "frames", ("toy_frames",), DEFAULT_FRAMES, int)
    dim = slot_option(ctx, None, ("toy_dim",), DEFAULT_DIM, int)
    x = tf.ensure_shape(tf.cast(value, tf.float32), [None, dim])
    keep = tf.minimum(tf.shape(x)[0], frames)
    x = tf.pad(x[:keep], [[0, frames - keep], [0, 0]])
    mask = tf.cast(tf.range(frames) < keep, tf.int32)
    return DenseSlotOutput(values=tf.ensure_shape(x, [frames, dim]), mask=mask,
                           valid=keep > 0)


TOY = ToyModality()


class ToyAdapter(nn.Module):
  """Dense(frame) + the type row + LayerNorm: one slot of T entries."""

  config: Any
  type_id = 2

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], *, type_embedding: jax.Array,
               train: bool) -> Optional[adapters.AdapterOutput]:
    del train
    x = batch.get(STREAM)
    if x is None or x.shape[1] == 0:
      return None
    b, t, _ = x.shape
    d = self.config.d_model
    h = nn.Dense(d, name="proj")(x.astype(jnp.float32))
    h = h + type_embedding[self.type_id]
    h = nn.LayerNorm(name="ln")(h)[:, None]  # [B, 1, T, d]
    mask = jnp.asarray(batch[f"{STREAM}_mask"]).astype(bool)[:, None]
    offset, rank = adapters.slot_placement(
        batch, f"{STREAM}_text_offset", f"{STREAM}_slot_rank", b, 1)
    return adapters.AdapterOutput(
        embeddings=h, mask=mask, positions=jnp.zeros((b, 1, t, d), h.dtype),
        rel_ids=jnp.zeros((b, 1, t), jnp.int32), text_offset=offset,
        slot_rank=rank, rel_kind=adapters.REL_NONE)
