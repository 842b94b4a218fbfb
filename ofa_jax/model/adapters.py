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
import numpy as np

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
  """OFA's image path: ResNet → image_proj → + type[1] → patch LN → dropout.

  Besides the module, the class declares what shared code asks of an adapter:
  where OFA's checkpoints keep its parameters (`ofa_key_prefix`), the logical
  axes of its activations (`replicated_axes`), zero inputs for shape
  derivation (`dummy_inputs`), and its share of an encoder step
  (`encoder_positions`, `forward_flops`).
  """

  config: OFAConfig
  type_id = 1
  # OFA keeps the image path's parameters directly under `encoder.` (Flax: the
  # `encoder/images` submodule).
  ofa_key_prefix = ("encoder",)
  # The ResNet's activation axes (resnet.py): never split.
  replicated_axes = ("image_height", "image_width")
  default_image_size = 32  # dummy inputs when no task option says the side
  # The part of `forward_flops` whose input is data: no backward pass.
  data_input_part = "resnet_stem"

  @classmethod
  def dummy_inputs(cls, config: OFAConfig, batch_size: int,
                   options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Zero images of the side the tasks were trained at (`image_size`)."""
    del config
    size = int(options.get("image_size", cls.default_image_size))
    return {image_features.IMAGES: np.zeros((batch_size, 1, size, size, 3),
                                            np.float32),
            image_features.IMAGE_MASK: np.ones((batch_size, 1), np.int32)}

  @classmethod
  def encoder_positions(cls, config: OFAConfig, shape: Any) -> int:
    """Encoder positions the images of one example of a `flops.StepShape` take."""
    if not shape.num_images:
      return 0
    return shape.num_images * num_patches(config, shape.image_size)

  @classmethod
  def forward_flops(cls, config: OFAConfig, shape: Any) -> dict[str, int]:
    """Forward FLOPs of the image path on a `flops.StepShape` batch, by part;
    `stem` names the part whose input is data (no gradient in training)."""
    if not shape.num_images:
      return {}
    res = resnet_flops(config, shape.image_size)
    p = num_patches(config, shape.image_size)
    images = shape.batch_size * shape.num_images
    return {"resnet_stem": images * res["stem"],
            "resnet_blocks": images * res["blocks"],
            "image_proj": images * 2 * p * config.resnet_out_channels * (
                config.d_model)}


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


# ---- the ResNet's shape and cost (for flops.py and the benchmarks) -----------
def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - kernel) // stride + 1


def resnet_grid(config: OFAConfig, image_size: int) -> int:
  """Side of the ResNet feature grid (patches per side) for a square image."""
  del config
  if image_size < 1:
    raise ValueError(f"image_size must be >= 1, got {image_size}")
  s = _conv_out(image_size, 7, 2, 3)  # stem conv
  s = _conv_out(s, 3, 2, 1)  # max-pool
  for stage in range(3):
    if stage:
      s = _conv_out(s, 3, 2, 1)  # the stride sits on the first 3x3 conv
  return s


def num_patches(config: OFAConfig, image_size: int) -> int:
  """Encoder positions one image occupies (196 at 224 px)."""
  return resnet_grid(config, image_size) ** 2


def resnet_flops(config: OFAConfig, image_size: int) -> dict[str, int]:
  """Forward FLOPs of the ResNet on one image: {"stem": ..., "blocks": ...}."""
  w = config.resnet_width
  s = _conv_out(image_size, 7, 2, 3)
  stem = 2 * s * s * 7 * 7 * 3 * w
  s = _conv_out(s, 3, 2, 1)
  blocks = 0
  inplanes = w
  for stage, num_blocks in enumerate(config.resnet_layers):
    planes = w * 2 ** stage
    for b in range(num_blocks):
      stride = 2 if (stage and b == 0) else 1
      so = _conv_out(s, 3, stride, 1)
      blocks += 2 * s * s * inplanes * planes  # conv1 1x1
      blocks += 2 * so * so * 9 * planes * planes  # conv2 3x3 (strided)
      blocks += 2 * so * so * planes * 4 * planes  # conv3 1x1
      if b == 0 and (stride != 1 or inplanes != 4 * planes):
        blocks += 2 * so * so * inplanes * 4 * planes  # downsample 1x1
      inplanes = 4 * planes
      s = so
  return {"stem": stem, "blocks": blocks}


# ---- what shared code asks of the adapters --------------------------------------
def configured(config: OFAConfig) -> list[tuple[str, type]]:
  """(name, class) of every adapter the config builds, in config order."""
  return [(name, get_adapter_class(name)) for name in config.encoder_adapters]


def dummy_inputs(config: OFAConfig, options: Mapping[str, Any],
                 batch_size: int = 1) -> dict[str, np.ndarray]:
  """Zero inputs of every configured adapter that declares `dummy_inputs`,
  sized by the task options (e.g. the image side trained at)."""
  out: dict[str, np.ndarray] = {}
  for _, cls in configured(config):
    fn = getattr(cls, "dummy_inputs", None)
    if fn is not None:
      out.update(fn(config, batch_size, options))
  return out


def registered_classes() -> list[tuple[str, type]]:
  """(name, class) of every registered adapter (for model-independent tables)."""
  return [(name, get_adapter_class(name)) for name in model_registry.adapters()]


# stream name -> "module:Class": the adapters of the model registry.
ADAPTERS: Mapping[str, str] = types.MappingProxyType(model_registry.adapters())


def get_adapter_class(stream: str) -> type:
  """The adapter class of a stream name (or of an explicit 'module:Class')."""
  return model_registry.get_adapter_class(stream)


def adapter_name(stream: str) -> str:
  """Flax submodule name of a stream's adapter (the stream name, sanitized)."""
  return stream.rsplit(":", 1)[-1].replace(".", "_")
