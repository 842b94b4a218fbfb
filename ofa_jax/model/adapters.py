"""Modality adapters: how a dense input stream enters the encoder.

Why a registry of adapters: the encoder core knows only text tokens and a list
of `AdapterOutput`s. Each dense input stream of a modality (images, audio,
video, motion) gets one adapter that turns the stream into embeddings, a mask,
normalized absolute-position embeddings (for OFA's decoupled position bias)
and ids for its kind of relative bias. Adapters are registered by name in
`ofa_jax/model/registry.py` (with the target heads); `OFAConfig.encoder_adapters`
picks the ones a model builds.

Protocol of an adapter class (a flax Module):
  - constructed as `cls(config, name=stream)`;
  - `type_id`: class attribute, its row of the encoder `type_embedding`;
  - `__call__(batch, *, type_embedding, train) -> AdapterOutput | None`
    (None when the batch does not carry the stream); `type_embedding` is the
    encoder's [num_types, d] table: OFA adds the modality's row *before* the
    modality's LayerNorm, so the adapter adds it.

Parameter names of the image adapter (module `encoder/images`), with the OFA
(HF/modelscope and fairseq) key they come from:
  embed_images/...            encoder.embed_images.*   (see resnet.py)
  image_proj/{kernel,bias}    encoder.image_proj
  embed_image_positions       encoder.embed_image_positions.weight [42²+1, d]
  image_pos_ln                encoder.image_pos_ln
  patch_layernorm_embedding   encoder.patch_layernorm_embedding
"""

from __future__ import annotations

import types
from typing import Any, Mapping, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ofa_jax.modalities import image_features
from ofa_jax.model import layers
from ofa_jax.model import position
from ofa_jax.model import registry as model_registry
from ofa_jax.model.config import OFAConfig
from ofa_jax.model.resnet import ResNet

Array = jax.Array

# Kinds of relative bias an adapter's entries take (within one slot).
REL_NONE = "none"        # absolute bias only
REL_IMAGE_2D = "image2d"  # rel_ids are image patch ids; OFA's 2-D image table
REL_TEXT_1D = "text1d"    # rel_ids are 1-D positions; OFA's text table


@flax.struct.dataclass
class AdapterOutput:
  """One stream's contribution: K slots of n entries each (static shapes).

  Attributes:
    embeddings: [B, K, n, d] (type embedding, LayerNorm and dropout applied).
    mask: [B, K, n] bool, True for real entries.
    positions: [B, K, n, d] normalized absolute-position embeddings.
    rel_ids: [B, K, n] int32 ids for the relative bias of `rel_kind`.
    text_offset: [B, K] int32, encoder text tokens before each slot.
    slot_rank: [B, K] int32, index of each slot among non-token slots.
    rel_kind: one of REL_NONE, REL_IMAGE_2D, REL_TEXT_1D.
  """

  embeddings: Array
  mask: Array
  positions: Array
  rel_ids: Array
  text_offset: Array
  slot_rank: Array
  rel_kind: str = flax.struct.field(pytree_node=False, default=REL_NONE)


def slot_placement(batch: Mapping[str, Any], offset_key: str, rank_key: str,
                   batch_size: int, num_slots: int) -> tuple[Array, Array]:
  """The (text_offset, slot_rank) of a stream, defaulting to OFA's order.

  Without the placement features (e.g. a hand-made batch) the slots come
  first, in stream order: offset 0 and rank = slot index, i.e. `[image ; text]`.
  """
  offset = batch.get(offset_key)
  rank = batch.get(rank_key)
  if offset is None:
    offset = jnp.zeros((batch_size, num_slots), jnp.int32)
  if rank is None:
    rank = jnp.broadcast_to(jnp.arange(num_slots, dtype=jnp.int32),
                            (batch_size, num_slots))
  for key, value in ((offset_key, offset), (rank_key, rank)):
    if tuple(value.shape) != (batch_size, num_slots):
      raise ValueError(f"Feature {key!r} has shape {tuple(value.shape)}; "
                       f"expected {(batch_size, num_slots)}")
  return jnp.asarray(offset, jnp.int32), jnp.asarray(rank, jnp.int32)


class ImageAdapter(nn.Module):
  """OFA's image path: ResNet → image_proj → + type[1] → patch LN → dropout."""

  config: OFAConfig
  type_id = 1

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], *, type_embedding: Array,
               train: bool) -> Optional[AdapterOutput]:
    cfg = self.config
    images = batch.get(image_features.IMAGES)
    if images is None or images.shape[1] == 0:
      return None
    if images.ndim != 5 or images.shape[-1] != 3:
      raise ValueError(f"Feature {image_features.IMAGES!r} must be "
                       f"[B, Ni, S, S, 3]; "
                       f"got shape {tuple(images.shape)}")
    b, ni, height, width, _ = images.shape
    feats = ResNet(cfg, name="embed_images")(
        images.reshape(b * ni, height, width, 3), train)
    _, h, w, c = feats.shape
    feats = feats.reshape(b, ni, h * w, c)
    ids = position.image_position_ids(h, w, cfg.image_bucket_size)
    table = layers.position_table(
        cfg, position.num_image_positions(cfg.image_bucket_size),
        "embed_image_positions", self, image_grid=cfg.image_bucket_size)
    x = layers.dense(cfg, cfg.d_model, ("conv_out", "embed"),
                     name="image_proj")(feats)
    x = x + type_embedding[self.type_id].astype(x.dtype)
    if cfg.entangle_position_embedding:
      x = x + table[ids].astype(x.dtype)
    x = layers.apply_ln(layers.layer_norm(cfg, name="patch_layernorm_embedding"),
                        x, cfg.compute_dtype)
    x = nn.Dropout(cfg.dropout)(x, deterministic=not train)

    pos = layers.apply_ln(layers.layer_norm(cfg, name="image_pos_ln"),
                          table[ids], cfg.compute_dtype)

    mask = batch.get(image_features.IMAGE_MASK)
    if mask is None:
      mask = jnp.ones((b, ni), jnp.bool_)
    if tuple(mask.shape) != (b, ni):
      raise ValueError(f"Feature {image_features.IMAGE_MASK!r} has shape "
                       f"{tuple(mask.shape)}; expected {(b, ni)}")
    offset, rank = slot_placement(batch, image_features.IMAGE_TEXT_OFFSET,
                                  image_features.IMAGE_SLOT_RANK, b, ni)
    n = h * w
    return AdapterOutput(
        embeddings=x,
        mask=jnp.broadcast_to(mask.astype(jnp.bool_)[:, :, None], (b, ni, n)),
        positions=jnp.broadcast_to(pos, (b, ni, n, cfg.d_model)),
        rel_ids=jnp.broadcast_to(jnp.asarray(ids), (b, ni, n)),
        text_offset=offset, slot_rank=rank, rel_kind=REL_IMAGE_2D)


# stream name -> "module:Class": the adapters of the model registry.
ADAPTERS: Mapping[str, str] = types.MappingProxyType(model_registry.adapters())


def get_adapter_class(stream: str) -> type:
  """The adapter class of a stream name (or of an explicit 'module:Class')."""
  return model_registry.get_adapter_class(stream)


def adapter_name(stream: str) -> str:
  """Flax submodule name of a stream's adapter (the stream name, sanitized)."""
  return stream.rsplit(":", 1)[-1].replace(".", "_")
