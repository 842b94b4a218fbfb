"""The OFA encoder: text + adapter streams in instruction order, one bias per stack.

Parameter names (module `encoder`), with the OFA key (HF/modelscope naming;
fairseq is the same here):
  type_embedding [T, d]          encoder.type_embedding.weight
  layernorm_embedding            encoder.layernorm_embedding
  embed_positions [1026, d]      encoder.embed_positions.weight
  pos_ln                         encoder.pos_ln
  pos_q_linear, pos_k_linear     encoder.pos_{q,k}_linear
  images/...                     the image adapter (see adapters.py)
  layers_{i}/...                 encoder.layers.{i} (see layers.py) and
                                 encoder.{token,image}_rel_pos_table_list.{i}
  layer_norm                     encoder.layer_norm
The token embedding is the model-level `embed_tokens` (shared, passed in).

The absolute position bias `(W_q·pos)·s · (W_k·pos)ᵀ` is computed once for the
stack from the normalized position embeddings (text: `pos_ln(embed_positions
[text index])`; adapters bring their own). Relative biases: text × text pairs
use the 1-D text bucket of their text indices; entries of the same image slot
use the 2-D image bucket; every other pair has none (as in OFA).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import features
from ofa_jax.model import adapters as adapters_lib
from ofa_jax.model import layers
from ofa_jax.model import layout
from ofa_jax.model import position
from ofa_jax.model import remat
from ofa_jax.model.config import OFAConfig

Array = jax.Array


@flax.struct.dataclass
class EncoderOutput:
  """Everything the decoder needs from the encoder; a pytree with batch-leading leaves.

  Decoding code may repeat every leaf along axis 0 (beams, candidates).

  Attributes:
    hidden: [B, Ls, d] final (layer-normed) encoder states.
    mask: [B, Ls] bool, True for real (non-pad) positions.
    positions: [B, Ls, d] normalized absolute-position embeddings (the keys
      of the decoder's cross-attention position bias).
    code_mask: [B] bool, True where the decoder emits VQ image codes (OFA's
      `code_masks`: image positions, image LN and image relative bias).
    cross_kv: per decoder layer (key, value) [B, H, Ls, hd] of the
      cross-attention, or None (then the decoder projects `hidden` itself).
    cross_pos_key: [B, H, Ls, hd] the cross position keys, or None.
    segment_ids: [B, Ls] int32 for packed batches (decoder positions attend
      only to encoder positions of their segment), else None.
  """

  hidden: Array
  mask: Array
  positions: Array
  code_mask: Array
  cross_kv: Optional[tuple[tuple[Array, Array], ...]] = None
  cross_pos_key: Optional[Array] = None
  segment_ids: Optional[Array] = None


def drop_path_rates(rate: float, num_layers: int) -> list[float]:
  """OFA's linear stochastic-depth schedule over a stack."""
  return [float(r) for r in np.linspace(0.0, rate, num_layers)]


class OFAEncoder(nn.Module):
  """Embeds text and adapter streams, interleaves them, runs the layer stack."""

  config: OFAConfig

  @nn.compact
  def __call__(self, embedding: Array, batch: Mapping[str, Any], *,
               deterministic: bool) -> EncoderOutput:
    cfg = self.config
    dtype = cfg.compute_dtype
    tokens = batch.get(features.ENCODER_INPUT_TOKENS)
    if tokens is None or tokens.ndim != 2:
      raise ValueError(f"Feature {features.ENCODER_INPUT_TOKENS!r} must be an "
                       f"int [B, Li] array; got "
                       f"{None if tokens is None else tuple(tokens.shape)}")
    b, li = tokens.shape
    if li > cfg.max_source_positions:
      raise ValueError(f"Encoder text length {li} exceeds max_source_positions="
                       f"{cfg.max_source_positions}")

    type_table = self.param(
        "type_embedding",
        layers.partitioned(nn.initializers.normal(cfg.init_std),
                           ("type_vocab", "embed")),
        (cfg.num_type_embeddings, cfg.d_model), jnp.float32)
    segments, text_index = _packing(batch, b, li)
    pos_table = layers.position_table(cfg, cfg.max_source_positions + 2,
                                      "embed_positions", self)
    x = jnp.take(embedding, tokens, axis=0).astype(dtype) + type_table[0].astype(
        dtype)
    if cfg.entangle_position_embedding:
      x = x + pos_table[text_index].astype(dtype)
    x = layers.apply_ln(layers.layer_norm(cfg, name="layernorm_embedding"), x,
                        dtype)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    pos = layers.apply_ln(layers.layer_norm(cfg, name="pos_ln"),
                          pos_table[text_index], dtype)

    # Per-element streams, text first, then every adapter slot.
    xs = [x]
    valid = [tokens != cfg.pad_id]
    poss = [jnp.broadcast_to(pos, (b, li, cfg.d_model))]
    group_1d = [jnp.zeros((b, li), jnp.int32)]  # text = relative group 0
    pos_1d = [text_index]
    group_2d = [jnp.full((b, li), -1, jnp.int32)]
    ids_2d = [jnp.zeros((b, li), jnp.int32)]
    sizes, offsets, ranks, present = [], [], [], []
    for stream in cfg.encoder_adapters:
      adapter = adapters_lib.get_adapter_class(stream)(
          cfg, name=adapters_lib.adapter_name(stream))
      out = adapter(batch, type_embedding=type_table, train=not deterministic)
      if out is None:
        continue
      if segments is not None:
        raise ValueError(
            f"Packed batches ({features.ENCODER_SEGMENT_IDS!r}) must be "
            f"token-only, but stream {stream!r} is present")
      _, k, n, _ = out.embeddings.shape
      first = len(sizes) + 1  # relative groups of this stream's slots
      slot_group = jnp.broadcast_to(
          (first + jnp.arange(k, dtype=jnp.int32))[None, :, None], (b, k, n))
      none = jnp.full((b, k, n), -1, jnp.int32)
      xs.append(out.embeddings.reshape(b, k * n, -1).astype(dtype))
      valid.append(out.mask.reshape(b, k * n))
      poss.append(out.positions.reshape(b, k * n, -1).astype(dtype))
      is_1d = out.rel_kind == adapters_lib.REL_TEXT_1D
      is_2d = out.rel_kind == adapters_lib.REL_IMAGE_2D
      group_1d.append((slot_group if is_1d else none).reshape(b, k * n))
      group_2d.append((slot_group if is_2d else none).reshape(b, k * n))
      ids = out.rel_ids.astype(jnp.int32).reshape(b, k * n)
      pos_1d.append(ids)
      ids_2d.append(ids)
      sizes += [n] * k
      offsets.append(out.text_offset)
      ranks.append(out.slot_rank)
      present.append(jnp.any(out.mask, axis=-1))

    streams = [jnp.concatenate(s, axis=1) for s in
               (xs, valid, poss, group_1d, pos_1d, group_2d, ids_2d)]
    if sizes:
      dest = layout.destinations(li, sizes, jnp.concatenate(offsets, axis=1),
                                 jnp.concatenate(ranks, axis=1),
                                 jnp.concatenate(present, axis=1))
      index = layout.gather_index(dest)
      streams = [layout.apply(index, s) for s in streams]
    x, valid, pos, g1, p1, g2, i2 = streams
    x = x * valid[..., None].astype(dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    q_lin = layers.dense(cfg, cfg.d_model, ("embed", "joined_kv"),
                         name="pos_q_linear")
    k_lin = layers.dense(cfg, cfg.d_model, ("embed", "joined_kv"),
                         name="pos_k_linear")
    abs_bias = layers.position_logits(cfg, layers.split_heads(cfg, q_lin(pos)),
                                      layers.split_heads(cfg, k_lin(pos)))
    text_pair = (g1[:, :, None] == g1[:, None, :]) & (g1[:, :, None] >= 0)
    image_pair = (g2[:, :, None] == g2[:, None, :]) & (g2[:, :, None] >= 0)
    rel_index = position.combined_rel_index(
        position.text_rel_bucket(p1, p1, cfg.token_bucket_size,
                                 cfg.max_source_positions),
        text_pair,
        position.image_rel_bucket(i2, i2, cfg.image_bucket_size),
        image_pair, cfg.token_bucket_size, cfg.image_bucket_size)
    mask = valid[:, None, None, :]
    if segments is not None:
      mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])

    layer_cls = remat.wrap_layer(layers.EncoderLayer, cfg.layer_remat_policy,
                                 static_argnums=(5,))
    for i, rate in enumerate(drop_path_rates(cfg.encoder_drop_path_rate,
                                             cfg.encoder_layers)):
      x = layer_cls(cfg, drop_path_rate=rate, name=f"layers_{i}")(
          x, abs_bias, rel_index, mask, deterministic)
    x = layers.apply_ln(layers.layer_norm(cfg, name="layer_norm"), x, dtype)
    return EncoderOutput(hidden=x, mask=valid, positions=pos,
                         code_mask=jnp.zeros((b,), jnp.bool_),
                         segment_ids=segments)


def _packing(batch: Mapping[str, Any], b: int, li: int
             ) -> tuple[Optional[Array], Array]:
  """(segment ids or None, text position ids [B, Li]) of the encoder text.

  Packed token-only batches carry `encoder_segment_ids` / `encoder_positions`
  (SeqIO packing): each packed example restarts its positions at 0 and
  attends only within its segment.
  """
  segments = batch.get(features.ENCODER_SEGMENT_IDS)
  if segments is None:
    return None, jnp.broadcast_to(jnp.arange(li, dtype=jnp.int32), (b, li))
  positions = batch.get(features.ENCODER_POSITIONS)
  for key, value in ((features.ENCODER_SEGMENT_IDS, segments),
                     (features.ENCODER_POSITIONS, positions)):
    if value is None or tuple(value.shape) != (b, li):
      raise ValueError(f"Packed batch: {key!r} must be [B, Li]={(b, li)}; got "
                       f"{None if value is None else tuple(value.shape)}")
  return (jnp.asarray(segments, jnp.int32), jnp.asarray(positions, jnp.int32))
