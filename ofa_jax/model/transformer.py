"""OFATransformer: the whole OFA network over the model-feature batch.

Variables:
  params/embed_tokens [V, d]   the one matrix shared by encoder input, decoder
                               input and output projection (OFA's
                               `encoder.embed_tokens.weight`; axes vocab, embed);
                               V = config.padded_vocab_size (zero padding rows)
  params/encoder/..., params/decoder/...  (see encoder.py, decoder.py)
  batch_stats/encoder/images/embed_images/...  ResNet BatchNorm statistics
  cache/decoder/...            only for cached decoding (see decoder.py)

Usage:
  model = OFATransformer(config)
  variables = model.init(rngs, batch, train=False)   # or init_variables(...)
  logits = model.apply(variables, batch, train=False)
  logits, updates = model.apply(variables, batch, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])
Params are `nn.LogicallyPartitioned` boxes; `nn.get_partition_spec(variables)`
gives their logical specs and `nn.unbox` the plain arrays.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import features
from ofa_jax.modalities import image_features
from ofa_jax.model import layers
from ofa_jax.model.config import OFAConfig
from ofa_jax.model.decoder import OFADecoder
from ofa_jax.model.encoder import EncoderOutput, OFAEncoder

Array = jax.Array

# Optional model feature: [B] bool, the decoder emits VQ codes (OFA code_masks).
DECODER_CODE_MASK = "decoder_code_mask"


def _embed_init(pad_id: int, std: float, vocab_size: int,
                ordered_bins: int = 0):
  """Normal rows, the pad row zeroed (as OFA); with ordered_bins > 0 the last
  `ordered_bins` ids of the vocabulary (the <bin_k>) are smooth in k
  (`OFAConfig.ordered_init`). Rows from `vocab_size` on (the padding of
  `OFAConfig.vocab_pad_multiple`) are zeros: no id reads them, and a converted
  OFA checkpoint has zeros there too."""
  def init(key, shape, dtype=jnp.float32):
    k_normal, k_bins = jax.random.split(key)
    table = std * jax.random.normal(k_normal, shape, dtype)
    if ordered_bins:
      bins = layers.ordered_rows(k_bins, ordered_bins, shape[1], std)
      table = table.at[vocab_size - ordered_bins:vocab_size].set(
          bins.astype(dtype))
    table = table.at[vocab_size:].set(0.0)
    return table.at[pad_id].set(0.0)  # OFA zeroes the pad row
  return init


def code_mask_of(batch: Mapping[str, Any], batch_size: int) -> Array:
  """[B] bool: which examples decode image codes.

  Taken from the explicit `decoder_code_mask` feature when present, else from
  `decoder_target_kinds` (any CODE target), else all False.
  """
  if DECODER_CODE_MASK in batch:
    return jnp.asarray(batch[DECODER_CODE_MASK], jnp.bool_).reshape(batch_size)
  kinds = batch.get(features.DECODER_TARGET_KINDS)
  if kinds is not None:
    return jnp.any(jnp.asarray(kinds) == int(features.TokenKind.CODE), axis=-1)
  return jnp.zeros((batch_size,), jnp.bool_)


class OFATransformer(nn.Module):
  """OFA encoder-decoder; `__call__(batch, train=...)` -> float32 logits [B, Lo, V]."""

  config: OFAConfig

  def setup(self):
    cfg = self.config
    self.embed_tokens = self.param(
        "embed_tokens",
        layers.partitioned(_embed_init(cfg.pad_id, cfg.init_std, cfg.vocab_size,
                                       cfg.num_bins if cfg.ordered_init else 0),
                           ("vocab", "embed")),
        (cfg.padded_vocab_size, cfg.d_model), jnp.float32)
    self.encoder = OFAEncoder(cfg)
    self.decoder = OFADecoder(cfg)

  def encode(self, batch: Mapping[str, Any], *, train: bool,
             precompute_cross: bool = True) -> EncoderOutput:
    """Runs the encoder once; with precompute_cross, also the decoder's cross K/V."""
    encoded = self.encoder(self.embed_tokens, batch, deterministic=not train)
    encoded = encoded.replace(
        code_mask=code_mask_of(batch, encoded.hidden.shape[0]))
    if precompute_cross:
      kv, pos_key = self.decoder.precompute_cross(encoded.hidden,
                                                  encoded.positions)
      encoded = encoded.replace(cross_kv=kv, cross_pos_key=pos_key)
    return encoded

  def decode(self, encoded: EncoderOutput, decoder_input_tokens: Array, *,
             train: bool = False, decode: bool = False,
             decode_step: Optional[Array] = None,
             code_mask: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None) -> Array:
    """Decoder logits [B, Lo, V] float32.

    decode=True runs one step ([B, 1] tokens) against the `cache` collection
    (call with mutable=["cache"]); the step index is the cache's own counter
    unless decode_step is given. code_mask [B] overrides `encoded.code_mask`.
    decoder_segment_ids / decoder_positions: packed batches only.
    """
    if code_mask is None:
      code_mask = encoded.code_mask
    return self.decoder(self.embed_tokens, decoder_input_tokens, encoded,
                        code_mask=code_mask, deterministic=not train,
                        decode=decode, decode_step=decode_step,
                        segment_ids=decoder_segment_ids,
                        positions=decoder_positions)

  def __call__(self, batch: Mapping[str, Any], *, train: bool) -> Array:
    if features.DECODER_INPUT_TOKENS not in batch:
      raise ValueError(f"Batch lacks {features.DECODER_INPUT_TOKENS!r}; has "
                       f"{sorted(batch)}")
    encoded = self.encode(batch, train=train)
    return self.decode(
        encoded, batch[features.DECODER_INPUT_TOKENS], train=train,
        decoder_segment_ids=batch.get(features.DECODER_SEGMENT_IDS),
        decoder_positions=batch.get(features.DECODER_POSITIONS))


def dummy_batch(config: OFAConfig, batch_size: int = 1, input_length: int = 8,
                target_length: int = 8, num_images: int = 1,
                image_size: int = 32) -> dict[str, np.ndarray]:
  """A zero-content batch of the given static shapes (for init / eval_shape)."""
  del config
  batch = {
      features.ENCODER_INPUT_TOKENS: np.full((batch_size, input_length), 4,
                                             np.int32),
      features.DECODER_INPUT_TOKENS: np.full((batch_size, target_length), 4,
                                             np.int32),
  }
  if num_images:
    batch[image_features.IMAGES] = np.zeros(
        (batch_size, num_images, image_size, image_size, 3), np.float32)
    batch[image_features.IMAGE_MASK] = np.ones((batch_size, num_images), np.int32)
  return batch


def init_variables(config: OFAConfig, rng: Array,
                   batch: Optional[Mapping[str, Any]] = None) -> dict:
  """params + batch_stats of a fresh model (boxed with logical axes)."""
  model = OFATransformer(config)
  if batch is None:
    batch = dummy_batch(config)
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init({"params": params_rng, "dropout": dropout_rng}, batch,
                    train=False)


def init_cache(config: OFAConfig, batch_size: int, max_decode_length: int
               ) -> dict:
  """Zeros for the `cache` collection of cached decoding (no params needed).

  The shapes come from an abstract (eval_shape) init of `decode` on a
  [batch_size, max_decode_length] dummy, so they always match the modules.
  """
  model = OFATransformer(config)
  d = config.d_model
  enc_len = 1
  encoded = EncoderOutput(
      hidden=jnp.zeros((batch_size, enc_len, d), config.compute_dtype),
      mask=jnp.ones((batch_size, enc_len), jnp.bool_),
      positions=jnp.zeros((batch_size, enc_len, d), config.compute_dtype),
      code_mask=jnp.zeros((batch_size,), jnp.bool_),
      cross_kv=None, cross_pos_key=None)
  tokens = jnp.zeros((batch_size, max_decode_length), jnp.int32)

  def _init():
    return model.init(jax.random.key(0), encoded, tokens, decode=True,
                      method=OFATransformer.decode)["cache"]

  shapes = jax.eval_shape(_init)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def count_params(variables_or_params: Mapping[str, Any]) -> int:
  """Number of trainable scalars (the `params` collection; no BN statistics)."""
  tree = variables_or_params.get("params", variables_or_params)
  tree = nn.unbox(tree)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
