"""The VQGAN's convolutional encoder and decoder (taming-transformers layout), NHWC.

Why these shapes and names: converted taming / OFA checkpoints must drop in
unchanged, so every block mirrors taming's ``diffusionmodules.model`` (the
same sub-module names, so ``conversion.py`` maps names mechanically) while the
arithmetic is written for XLA: NHWC convolutions, nearest upsampling as a
broadcast, and spatial self-attention as one batched matmul over the ``h*w``
positions.

Attention placement is decided from ``config.resolution`` (the training
resolution), never from the input's size, exactly as taming does; other input
sizes (multiples of the downsample factor) run the same network.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ofa_jax.model.vqgan.config import GROUP_NORM_GROUPS, VQGANConfig

Dtype = Any


def group_norm(dtype: Dtype, name: str) -> nn.GroupNorm:
  """taming's ``Normalize``: GroupNorm(32 groups, eps 1e-6, affine).

  The two-pass variance keeps large activations accurate (the one-pass
  ``E[x^2] - E[x]^2`` loses digits there and parity with PyTorch with them).
  """
  return nn.GroupNorm(num_groups=GROUP_NORM_GROUPS, epsilon=1e-6, dtype=dtype,
                      use_fast_variance=False, name=name)


def conv_kernel_bound(shape: tuple[int, ...]) -> float:
  """1 / sqrt(fan_in) of an HWIO kernel: PyTorch's Conv2d default init
  (kaiming_uniform with a=sqrt(5)) is U(-bound, bound), so a VQGAN trained
  from scratch here starts as taming's did."""
  fan_in = 1
  for size in shape[:-1]:
    fan_in *= size
  return fan_in ** -0.5


def conv_kernel_init(key: jax.Array, shape: tuple[int, ...],
                     dtype: Dtype = jnp.float32) -> jax.Array:
  bound = conv_kernel_bound(shape)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def conv(features: int, kernel: int, dtype: Dtype, name: str | None = None, *,
         stride: int = 1, padding: Any = None) -> nn.Conv:
  """A square convolution ("same" padding for odd kernels unless told);
  kernels start as PyTorch's, biases at zero."""
  if padding is None:
    padding = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, dtype=dtype, kernel_init=conv_kernel_init,
                 name=name)


class ResnetBlock(nn.Module):
  """norm, swish, conv, norm, swish, dropout, conv; plus the shortcut."""

  out_channels: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    h = nn.swish(group_norm(self.dtype, "norm1")(x))
    h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
    h = nn.swish(group_norm(self.dtype, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      # taming's default (conv_shortcut=False): a 1x1 "network in network".
      x = conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all spatial positions, residual."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = group_norm(self.dtype, "norm")(x)
    q, k, v = (conv(channels, 1, self.dtype, name)(h).reshape(
        batch, height * width, channels) for name in ("q", "k", "v"))
    logits = jnp.einsum("bic,bjc->bij", q, k,
                        preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (channels ** -0.5), axis=-1)
    h = jnp.einsum("bij,bjc->bic", weights.astype(v.dtype), v)
    h = h.reshape(batch, height, width, channels)
    return x + conv(channels, 1, self.dtype, "proj_out")(h)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after zero-padding one row / column at the end."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv(x.shape[-1], 3, self.dtype, "conv", stride=2,
                padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 (a broadcast, no gather), then a 3x3 conv."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :],
                         (batch, height, 2, width, 2, channels))
    x = x.reshape(batch, 2 * height, 2 * width, channels)
    return conv(channels, 3, self.dtype, "conv")(x)


class Level(nn.Module):
  """One resolution of the encoder ("down") or decoder ("up"): ResnetBlocks,
  each followed by an AttnBlock where ``with_attention``, then an optional
  resampling (``resample``: "down", "up" or None)."""

  out_channels: int
  num_blocks: int
  with_attention: bool
  resample: str | None
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for i in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.dropout, self.dtype,
                      name=f"block_{i}")(x, train=train)
      if self.with_attention:
        x = AttnBlock(self.dtype, name=f"attn_{i}")(x)
    if self.resample == "down":
      x = Downsample(self.dtype, name="downsample")(x)
    elif self.resample == "up":
      x = Upsample(self.dtype, name="upsample")(x)
    elif self.resample is not None:
      raise ValueError(f"Level.resample={self.resample!r}; expected 'down', "
                       "'up' or None")
    return x


class MidBlock(nn.Module):
  """ResnetBlock -> AttnBlock -> ResnetBlock at the lowest resolution."""

  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    channels = x.shape[-1]
    x = ResnetBlock(channels, self.dropout, self.dtype, name="block_1")(
        x, train=train)
    x = AttnBlock(self.dtype, name="attn_1")(x)
    return ResnetBlock(channels, self.dropout, self.dtype, name="block_2")(
        x, train=train)


class Encoder(nn.Module):
  """Pixels [B, H, W, in_channels] -> features [B, H/f, W/f, z_channels]."""

  config: VQGANConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    x = conv(cfg.ch, 3, self.dtype, "conv_in")(x.astype(self.dtype))
    side = cfg.resolution
    for i, mult in enumerate(cfg.ch_mult):
      last = i == cfg.num_levels - 1
      x = Level(cfg.ch * mult, cfg.num_res_blocks,
                with_attention=side in cfg.attn_resolutions,
                resample=None if last else "down", dropout=cfg.dropout,
                dtype=self.dtype, name=f"down_{i}")(x, train=train)
      if not last:
        side //= 2
    x = MidBlock(cfg.dropout, self.dtype, name="mid")(x, train=train)
    x = nn.swish(group_norm(self.dtype, "norm_out")(x))
    return conv(cfg.z_channels, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
  """Features [B, h, w, z_channels] -> pixels [B, h*f, w*f, out_channels]."""

  config: VQGANConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    x = conv(cfg.ch * cfg.ch_mult[-1], 3, self.dtype, "conv_in")(
        z.astype(self.dtype))
    x = MidBlock(cfg.dropout, self.dtype, name="mid")(x, train=train)
    side = cfg.resolution // cfg.downsample_factor
    # Highest level first; named as taming's `up[i_level]` list.
    for i in reversed(range(cfg.num_levels)):
      x = Level(cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1,
                with_attention=side in cfg.attn_resolutions,
                resample="up" if i else None, dropout=cfg.dropout,
                dtype=self.dtype, name=f"up_{i}")(x, train=train)
      if i:
        side *= 2
    x = nn.swish(group_norm(self.dtype, "norm_out")(x))
    x = conv(cfg.out_channels, 3, self.dtype, "conv_out")(x)
    return x.astype(jnp.float32)
