"""The OFA decoder, with a KV cache whose position biases are sliced, not recomputed.

Parameter names (module `decoder`), with the OFA key (HF/modelscope naming):
  layernorm_embedding, code_layernorm_embedding    decoder.{same}
  embed_positions [1026, d]                        decoder.embed_positions.weight
  embed_image_positions [42²+1, d]                 decoder.embed_image_positions.weight
  pos_ln, image_pos_ln                             decoder.{same}
  self_pos_q_linear, self_pos_k_linear             decoder.{same}
  cross_pos_q_linear, cross_pos_k_linear           decoder.{same}
  layers_{i}/...                                   decoder.layers.{i} (layers.py) and
                                                   decoder.{token,image}_rel_pos_table_list.{i}
  layer_norm                                       decoder.layer_norm
Input embedding and output projection are the shared model-level `embed_tokens`.

Code samples (`code_mask[b]`, OFA's `code_masks`) take, for every position,
image position ids `[0] + code grid + filler`, `image_pos_ln`,
`code_layernorm_embedding` and the 2-D image relative bias; text samples take
`embed_positions[t]`, `pos_ln`, `layernorm_embedding` and the 1-D text bias.

Cached decoding (`decode=True`, one token per call): the `cache` collection
holds `cache_index` (scalar), `pos_key` [B, H, max_len, hd] (the self
position keys of the steps so far), `key_valid` [B, max_len] (non-pad steps),
and per layer `self_attn/cached_key`, `cached_value` [B, H, max_len, hd]. A step
computes only its own position query/key; the relative bias row is gathered
from static bucket tables; cross K/V and cross position keys come precomputed
in the EncoderOutput. Create the cache by calling with `decode=True` on a
[B, max_len] dummy during init (t5x pattern), e.g. `transformer.init_cache`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ofa_jax.model import layers
from ofa_jax.model import position
from ofa_jax.model import remat
from ofa_jax.model.config import OFAConfig
from ofa_jax.model.encoder import EncoderOutput, drop_path_rates

Array = jax.Array


def mask_padded_ids(logits: Array, vocab_size: int) -> Array:
  """Logits [..., V_padded] with the ids >= vocab_size at the float32 minimum.

  The embedding's padding rows (`OFAConfig.vocab_pad_multiple`) exist only so
  that the vocabulary axis splits evenly over model shards; with their logits
  at the minimum, argmax, beam search, sampling and scoring never pick them and
  their softmax probability is exactly 0 (the loss also leaves them out of its
  label smoothing: `models.token_losses`). Elementwise, so a vocab-sharded
  logits array stays sharded.
  """
  if logits.shape[-1] == vocab_size:
    return logits
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.where(ids < vocab_size, logits, jnp.finfo(jnp.float32).min)


class OFADecoder(nn.Module):
  """Causal decoder over the shared embedding; returns float32 logits [B, Lq, V].

  V is the embedding's row count, `config.padded_vocab_size`; the padding ids'
  logits are the float32 minimum (`mask_padded_ids`).
  """

  config: OFAConfig

  def setup(self):
    cfg = self.config
    self.layernorm_embedding = layers.layer_norm(cfg)
    self.code_layernorm_embedding = layers.layer_norm(cfg)
    self.embed_positions = layers.position_table(
        cfg, cfg.max_target_positions + 2, "embed_positions", self)
    self.embed_image_positions = layers.position_table(
        cfg, position.num_image_positions(cfg.image_bucket_size),
        "embed_image_positions", self, image_grid=cfg.image_bucket_size)
    self.pos_ln = layers.layer_norm(cfg)
    self.image_pos_ln = layers.layer_norm(cfg)
    axes = ("embed", "joined_kv")
    self.self_pos_q_linear = layers.dense(cfg, cfg.d_model, axes)
    self.self_pos_k_linear = layers.dense(cfg, cfg.d_model, axes)
    self.cross_pos_q_linear = layers.dense(cfg, cfg.d_model, axes)
    self.cross_pos_k_linear = layers.dense(cfg, cfg.d_model, axes)
    layer_cls = remat.wrap_layer(layers.DecoderLayer, cfg.layer_remat_policy,
                                 static_argnums=(8, 9))
    self.layers = [layer_cls(cfg, drop_path_rate=r) for r in
                   drop_path_rates(cfg.decoder_drop_path_rate,
                                   cfg.decoder_layers)]
    self.layer_norm = layers.layer_norm(cfg)
    self.dropout = nn.Dropout(cfg.dropout)

  def precompute_cross(self, encoder_hidden: Array, encoder_positions: Array
                       ) -> tuple[tuple[tuple[Array, Array], ...], Array]:
    """Cross-attention keys/values per layer and the cross position keys."""
    kv = tuple(layer.cross_kv(encoder_hidden) for layer in self.layers)
    pos_key = layers.split_heads(self.config,
                                 self.cross_pos_k_linear(encoder_positions))
    return kv, pos_key

  def _target_positions(self, q_pos: Array, code_mask: Array
                        ) -> tuple[Array, Array]:
    """(normalized, raw) position embeddings [B, Lq, d] of positions q_pos [B, Lq].

    The normalized ones feed the position biases; the raw ones are what
    `entangle_position_embedding` adds to the token stream (as OFA does).
    """
    cfg = self.config
    dtype = cfg.compute_dtype
    code_ids = jnp.asarray(position.code_position_ids(
        cfg.code_grid_size, cfg.max_target_positions, cfg.image_bucket_size))
    raw_text = self.embed_positions[q_pos]
    raw_image = self.embed_image_positions[code_ids[q_pos]]
    text = layers.apply_ln(self.pos_ln, raw_text, dtype)
    image = layers.apply_ln(self.image_pos_ln, raw_image, dtype)
    is_code = code_mask[:, None, None]
    return (jnp.where(is_code, image, text),
            jnp.where(is_code, raw_image, raw_text).astype(dtype))

  def _rel_index(self, q_pos: Array, k_pos: Array, code_mask: Array) -> Array:
    cfg = self.config
    code_ids = jnp.asarray(position.code_position_ids(
        cfg.code_grid_size, cfg.max_target_positions, cfg.image_bucket_size))
    text = position.text_rel_bucket(q_pos, k_pos, cfg.token_bucket_size,
                                    cfg.max_target_positions)
    image = position.image_rel_bucket(code_ids[q_pos], code_ids[k_pos],
                                      cfg.image_bucket_size)
    is_code = code_mask[:, None, None]
    return position.combined_rel_index(text, ~is_code, image, is_code,
                                       cfg.token_bucket_size,
                                       cfg.image_bucket_size)

  @nn.compact
  def __call__(self, embedding: Array, tokens: Array, encoded: EncoderOutput,
               *, code_mask: Array, deterministic: bool, decode: bool = False,
               decode_step: Optional[Array] = None,
               segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None) -> Array:
    """Logits of `tokens` [B, Lq] given the encoder output.

    segment_ids / positions [B, Lq]: packed batches (SeqIO packing); each
    segment attends causally within itself and to its own encoder segment.
    """
    cfg = self.config
    dtype = cfg.compute_dtype
    if tokens.ndim != 2:
      raise ValueError(f"decoder_input_tokens must be [B, Lo]; got shape "
                       f"{tuple(tokens.shape)}")
    b, lq = tokens.shape
    h, hd = cfg.attention_heads, cfg.head_dim
    code_mask = jnp.asarray(code_mask, jnp.bool_)
    if code_mask.shape != (b,):
      raise ValueError(f"code_mask must be [B]={b}; got {code_mask.shape}")
    step = None
    cached = False
    if decode:
      cached = self.has_variable("cache", "cache_index")
      index_var = self.variable("cache", "cache_index",
                                lambda: jnp.array(0, jnp.int32))
      pos_key_var = self.variable("cache", "pos_key", jnp.zeros,
                                  (b, h, lq, hd), dtype)
      valid_var = self.variable("cache", "key_valid", jnp.zeros, (b, lq),
                                jnp.bool_)
      if cached:
        if lq != 1:
          raise ValueError(f"Cached decoding feeds one token per step; got "
                           f"decoder_input_tokens of shape {tuple(tokens.shape)}")
        step = index_var.value if decode_step is None else jnp.asarray(
            decode_step, jnp.int32)
    if lq > cfg.max_target_positions:
      raise ValueError(f"Decoder length {lq} exceeds max_target_positions="
                       f"{cfg.max_target_positions}")

    packed = segment_ids is not None
    if not packed and encoded.segment_ids is not None:
      raise ValueError("The encoder output is packed (encoder_segment_ids) but "
                       "the decoder got no decoder_segment_ids")
    if packed:
      if cached or encoded.segment_ids is None:
        raise ValueError("Packed decoder inputs need a packed encoder output "
                         "(encoder_segment_ids) and no cached decoding")
      for name, value in (("decoder_segment_ids", segment_ids),
                          ("decoder_positions", positions)):
        if value is None or tuple(value.shape) != (b, lq):
          raise ValueError(f"Packed batch: {name!r} must be [B, Lo]={(b, lq)}; "
                           f"got {None if value is None else tuple(value.shape)}")
    if cached:
      max_len = pos_key_var.value.shape[2]
      q_order = step[None]
      k_order = jnp.arange(max_len, dtype=jnp.int32)
    else:
      q_order = k_order = jnp.arange(lq, dtype=jnp.int32)
    if packed:
      q_pos = k_pos = jnp.asarray(positions, jnp.int32)
    else:
      q_pos = jnp.broadcast_to(q_order, (b,) + q_order.shape)
      k_pos = jnp.broadcast_to(k_order, (b,) + k_order.shape)
    tgt_pos, raw_tgt_pos = self._target_positions(q_pos, code_mask)
    pos_q = layers.split_heads(cfg, self.self_pos_q_linear(tgt_pos))
    pos_k = layers.split_heads(cfg, self.self_pos_k_linear(tgt_pos))
    new_valid = tokens != cfg.pad_id
    if cached:
      pos_key_var.value = jax.lax.dynamic_update_slice(
          pos_key_var.value, pos_k.astype(pos_key_var.value.dtype),
          (0, 0, step, 0))
      valid_var.value = jax.lax.dynamic_update_slice(valid_var.value,
                                                     new_valid, (0, step))
      pos_k, key_valid = pos_key_var.value, valid_var.value
    else:
      key_valid = new_valid
    self_abs = layers.position_logits(cfg, pos_q, pos_k)
    rel_index = self._rel_index(q_pos, k_pos, code_mask)
    causal = k_order[None, :] <= q_order[:, None]
    self_mask = causal[None, None] & key_valid[:, None, None, :]

    cross_kv, cross_pos_key = encoded.cross_kv, encoded.cross_pos_key
    if cross_kv is None or cross_pos_key is None:
      cross_kv, cross_pos_key = self.precompute_cross(encoded.hidden,
                                                      encoded.positions)
    cross_q = layers.split_heads(cfg, self.cross_pos_q_linear(tgt_pos))
    cross_bias = layers.position_logits(cfg, cross_q, cross_pos_key)
    cross_mask = encoded.mask[:, None, None, :]
    if packed:
      seg = jnp.asarray(segment_ids, jnp.int32)
      self_mask = self_mask & (seg[:, None, :, None] == seg[:, None, None, :])
      cross_mask = cross_mask & (
          seg[:, None, :, None] == encoded.segment_ids[:, None, None, :])

    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    if cfg.entangle_position_embedding:
      x = x + raw_tgt_pos
    x = jnp.where(code_mask[:, None, None],
                  layers.apply_ln(self.code_layernorm_embedding, x, dtype),
                  layers.apply_ln(self.layernorm_embedding, x, dtype))
    x = self.dropout(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for layer, kv in zip(self.layers, cross_kv):
      x = layer(x, self_abs, rel_index, self_mask, kv, cross_bias, cross_mask,
                deterministic, decode, step)
    x = layers.apply_ln(self.layer_norm, x, dtype)
    logits = jnp.einsum("bld,vd->blv", x, embedding.astype(dtype),
                        preferred_element_type=jnp.float32)
    logits = mask_padded_ids(logits, cfg.vocab_size)
    if cached:
      index_var.value = step + 1
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
