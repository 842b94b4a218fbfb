"""OFA's transformer building blocks: attention with bias, NormFormer layers.

Parameter names follow the HF / modelscope port of OFA one-to-one, so the
converter maps keys mechanically (fairseq names in brackets):

  layers_{i}/self_attn/{q_proj,k_proj,v_proj,out_proj}/{kernel,bias}, .../c_attn
  layers_{i}/self_attn_layer_norm            [self_attn_layer_norm]
  layers_{i}/self_attn_mid_layer_norm        [attn_ln / self_attn_ln]
  layers_{i}/cross_attn/...                  [encoder_attn]   (decoder only)
  layers_{i}/cross_attn_layer_norm           [encoder_attn_layer_norm]
  layers_{i}/cross_attn_mid_layer_norm       [cross_attn_ln]
  layers_{i}/{fc1,fc2}, layers_{i}/ffn_layer_norm [ffn_layernorm],
  layers_{i}/final_layer_norm
  layers_{i}/token_rel_pos_table  [511, H]   = {enc,dec}.token_rel_pos_table_list.{i}.weight
  layers_{i}/image_rel_pos_table  [6892, H]  = {enc,dec}.image_rel_pos_table_list.{i}.weight

Dense kernels are [in, out] (transpose of torch Linear.weight); LayerNorms have
`scale` / `bias`. Logical axes: q/k/v kernels (embed, joined_kv), out_proj
(joined_kv, embed), fc1 (embed, mlp), fc2 (mlp, embed), c_attn (heads,),
rel tables (relpos_buckets, heads), LayerNorm (embed,) or (mlp,).

Numerics: LayerNorm, softmax, GELU and all position biases run in float32; the
matmuls run in `config.dtype`. Attention masks are boolean (True = attend) and
applied with `where` after the biases are added, so a fully masked row gives a
uniform distribution instead of NaN.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ofa_jax.model import position
from ofa_jax.model.config import OFAConfig

Array = jax.Array
_NEG = jnp.finfo(jnp.float32).min


def partitioned(init: Callable, axes: Sequence[Optional[str]]) -> Callable:
  return nn.with_logical_partitioning(init, tuple(axes))


def dense(config: OFAConfig, features: int, axes: tuple[str, str], *,
          use_bias: bool = True, name: Optional[str] = None) -> nn.Dense:
  """A Linear layer with OFA's init (N(0, 0.02), zero bias) and logical axes."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=config.compute_dtype,
      param_dtype=jnp.float32,
      kernel_init=partitioned(nn.initializers.normal(config.init_std), axes),
      bias_init=partitioned(nn.initializers.zeros, axes[1:]), name=name)


def layer_norm(config: OFAConfig, axis: str = "embed",
               name: Optional[str] = None) -> nn.LayerNorm:
  """torch-equivalent LayerNorm (eps 1e-5, two-pass variance), float32 math."""
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
      use_fast_variance=False,
      scale_init=partitioned(nn.initializers.ones, (axis,)),
      bias_init=partitioned(nn.initializers.zeros, (axis,)), name=name)


def apply_ln(ln: nn.LayerNorm, x: Array, dtype: Any) -> Array:
  return ln(x.astype(jnp.float32)).astype(dtype)


def position_table(config: OFAConfig, num: int, name: str,
                   module: nn.Module, image_grid: int = 0) -> Array:
  """An absolute position table [num, d] (axes abspos_buckets, embed).

  image_grid > 0: the table of image positions (row 0 reserved, then
  `1 + col + row * image_grid`), which `config.ordered_init` makes smooth in
  the patch row and column.
  """
  init = nn.initializers.normal(config.init_std)
  if image_grid and config.ordered_init:
    init = ordered_grid_init(config.init_std, image_grid)
  return module.param(name, partitioned(init, ("abspos_buckets", "embed")),
                      (num, config.d_model), jnp.float32)


# Sinusoid frequencies of `ordered_init`: a bin table spans at most 1.5 cycles
# end to end; an image table turns at most 2.4 rad from one patch to the next.
_MAX_BIN_CYCLES = 1.5
_MAX_PATCH_RADIANS = 2.4


def _random_sinusoids(key: Array, coord: Array, dim: int, max_freq: float,
                      std: float) -> Array:
  """std·√2·cos(f·coord + φ) with f ~ U(0, max_freq), φ ~ U(0, 2π) per feature."""
  k_freq, k_phase = jax.random.split(key)
  freq = jax.random.uniform(k_freq, (dim,), minval=0.0, maxval=max_freq)
  phase = jax.random.uniform(k_phase, (dim,), minval=0.0, maxval=2 * jnp.pi)
  return std * jnp.sqrt(2.0) * jnp.cos(freq * coord + phase)


def ordered_rows(key: Array, num: int, dim: int, std: float) -> Array:
  """[num, dim] rows that change smoothly with the row index (rms ≈ std)."""
  turns = 2 * jnp.pi * jnp.arange(num, dtype=jnp.float32)[:, None] / max(num - 1, 1)
  return _random_sinusoids(key, turns, dim, _MAX_BIN_CYCLES, std)


def ordered_grid_init(std: float, grid: int):
  """Initializer of an image position table: each feature is a sinusoid of the
  patch column or of its row (picked at random); row 0 stays normal."""
  def init(key, shape, dtype=jnp.float32):
    num, dim = shape
    k_normal, k_waves, k_axis = jax.random.split(key, 3)
    table = std * jax.random.normal(k_normal, shape, dtype)
    index = jnp.arange(num - 1)
    col = (index % grid).astype(jnp.float32)[:, None]
    row = (index // grid).astype(jnp.float32)[:, None]
    coord = jnp.where(jax.random.bernoulli(k_axis, 0.5, (dim,)), col, row)
    smooth = _random_sinusoids(k_waves, coord, dim, _MAX_PATCH_RADIANS, std)
    return table.at[1:].set(smooth.astype(dtype))
  return init


# Logical axes of the attention internals. Heads split over the `model` mesh
# axis (partitioning.py), as the q/k/v kernels' `joined_kv` output does, so a
# model-parallel layer computes its own heads' scores without gathering; the
# batch stays split over `data`.
HEADS_AXES = ("batch", "heads", "length", "head_dim")   # q, k, v [B, H, L, hd]
SCORES_AXES = ("batch", "heads", "length", "kv_length")  # [B, H, Lq, Lk]


def constrain_heads(x: Array) -> Array:
  """Pins q/k/v [B, H, L, hd] to the heads layout (a no-op without a mesh)."""
  return nn.with_logical_constraint(x, HEADS_AXES)


def constrain_scores(x: Array) -> Array:
  """Pins attention scores / probabilities [B, H, Lq, Lk] likewise."""
  return nn.with_logical_constraint(x, SCORES_AXES)


def split_heads(config: OFAConfig, x: Array) -> Array:
  """[B, L, d] -> [B, H, L, head_dim]."""
  b, l, _ = x.shape
  return x.reshape(b, l, config.attention_heads, config.head_dim).transpose(
      0, 2, 1, 3)


def position_logits(config: OFAConfig, q: Array, k: Array) -> Array:
  """OFA's decoupled absolute-position bias: (q·s)·kᵀ per head, float32.

  q: [B, H, Lq, hd] (already projected), k: [B, H, Lk, hd] -> [B, H, Lq, Lk].
  """
  q = q.astype(jnp.float32) * config.scaling
  return jnp.einsum("bhqd,bhkd->bhqk", q, k.astype(jnp.float32))


class DropPath(nn.Module):
  """Per-sample stochastic depth on a residual branch (OFA's mask is (1, B, 1))."""

  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)


class Attention(nn.Module):
  """OFA multi-head attention: scale (2·hd)^-0.5, additive bias, head scale c_attn.

  Keys and values are [B, H, L, hd]. For decoder self-attention with
  `decode=True` the new step's key/value are written into the `cache`
  collection (`cached_key`, `cached_value`: [B, H, max_len, hd]) at
  `cache_index`, and attention runs over the whole cache (the causal mask
  hides the unwritten tail).
  """

  config: OFAConfig

  def setup(self):
    cfg = self.config
    d = cfg.d_model
    self.q_proj = dense(cfg, d, ("embed", "joined_kv"))
    self.k_proj = dense(cfg, d, ("embed", "joined_kv"))
    self.v_proj = dense(cfg, d, ("embed", "joined_kv"))
    self.out_proj = dense(cfg, d, ("joined_kv", "embed"))
    self.c_attn = self.param(
        "c_attn", partitioned(nn.initializers.ones, ("heads",)),
        (cfg.attention_heads,), jnp.float32)
    self.attn_dropout = nn.Dropout(cfg.attention_dropout)

  def project_kv(self, x: Array) -> tuple[Array, Array]:
    """Keys and values [B, H, L, hd] of x (for caching cross-attention inputs)."""
    k = split_heads(self.config, self.k_proj(x))
    v = split_heads(self.config, self.v_proj(x))
    return k, v

  @nn.compact
  def __call__(self, x: Array, *, bias: Array, mask: Array, deterministic: bool,
               kv: Optional[tuple[Array, Array]] = None, decode: bool = False,
               cache_index: Optional[Array] = None) -> Array:
    """x [B, Lq, d]; bias [B, H, Lq, Lk] float32; mask bool broadcastable to it.

    kv: precomputed (key, value) to attend to (cross-attention); None means
    self-attention over x.
    """
    if kv is None:
      k, v = self.project_kv(x)
      if decode:
        k, v = self._update_cache(k, v, cache_index)
    else:
      k, v = kv
    return self.attend(x, k, v, bias=bias, mask=mask,
                       deterministic=deterministic)

  def _update_cache(self, k: Array, v: Array,
                    cache_index: Optional[Array]) -> tuple[Array, Array]:
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape,
                             v.dtype)
    if not initialized:  # t5x pattern: the init call only sizes the cache.
      return k, v
    if k.shape[2] != 1:
      raise ValueError(f"Cached decoding feeds one token per step; got "
                       f"{k.shape[2]} decoder positions")
    start = (0, 0, cache_index, 0)
    cached_k.value = jax.lax.dynamic_update_slice(
        cached_k.value, k.astype(cached_k.value.dtype), start)
    cached_v.value = jax.lax.dynamic_update_slice(
        cached_v.value, v.astype(cached_v.value.dtype), start)
    return cached_k.value, cached_v.value

  def attend(self, x: Array, k: Array, v: Array, *, bias: Array, mask: Array,
             deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    b, lq, _ = x.shape
    q = constrain_heads(split_heads(cfg, self.q_proj(x)))
    k = constrain_heads(k.astype(dtype))
    v = constrain_heads(v.astype(dtype))
    use_dpa = cfg.use_dot_product_attention and (
        deterministic or cfg.attention_dropout == 0.0)
    if use_dpa:
      out = jax.nn.dot_product_attention(
          q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
          v.transpose(0, 2, 1, 3), bias=bias.astype(jnp.float32),
          mask=jnp.broadcast_to(mask, bias.shape), scale=cfg.scaling)
      out = out.transpose(0, 2, 1, 3)  # [B, H, Lq, hd]
    else:
      logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(cfg.scaling, dtype),
                          k, preferred_element_type=jnp.float32)
      logits = constrain_scores(jnp.where(mask, logits + bias, _NEG))
      probs = jax.nn.softmax(logits, axis=-1)
      probs = constrain_scores(
          self.attn_dropout(probs, deterministic=deterministic))
      out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(dtype), v)
    out = constrain_heads(out) * self.c_attn.astype(dtype)[None, :, None, None]
    out = out.transpose(0, 2, 1, 3).reshape(b, lq, cfg.d_model)
    return self.out_proj(out)


def rel_bias(config: OFAConfig, token_table: Array, image_table: Array,
             rel_index: Array) -> Array:
  """Gather a layer's relative bias [B, H, Lq, Lk] from its two tables.

  rel_index [B, Lq, Lk] indexes [text buckets ; image buckets ; one zero row]
  (see `position.combined_rel_index`), so pairs without a relative bias get 0.
  """
  zero = jnp.zeros((1, config.attention_heads), jnp.float32)
  table = jnp.concatenate([token_table.astype(jnp.float32),
                           image_table.astype(jnp.float32), zero], axis=0)
  return jnp.take(table, rel_index, axis=0).transpose(0, 3, 1, 2)


class _LayerBase(nn.Module):
  """Shared pieces of the encoder and decoder layers (FFN, rel tables)."""

  config: OFAConfig
  drop_path_rate: float = 0.0

  def _setup_common(self):
    cfg = self.config
    self.self_attn = Attention(cfg)
    self.self_attn_layer_norm = layer_norm(cfg)
    self.self_attn_mid_layer_norm = layer_norm(cfg)
    self.fc1 = dense(cfg, cfg.ffn_dim, ("embed", "mlp"))
    self.fc2 = dense(cfg, cfg.d_model, ("mlp", "embed"))
    self.ffn_layer_norm = layer_norm(cfg, "mlp")
    self.final_layer_norm = layer_norm(cfg)
    self.dropout = nn.Dropout(cfg.dropout)
    self.activation_dropout = nn.Dropout(cfg.activation_dropout)
    self.drop_path = DropPath(self.drop_path_rate)
    init = partitioned(nn.initializers.normal(cfg.init_std),
                       ("relpos_buckets", "heads"))
    self.token_rel_pos_table = self.param(
        "token_rel_pos_table", init,
        (position.num_text_buckets(cfg.token_bucket_size), cfg.attention_heads),
        jnp.float32)
    self.image_rel_pos_table = self.param(
        "image_rel_pos_table", init,
        (position.num_image_buckets(cfg.image_bucket_size),
         cfg.attention_heads), jnp.float32)

  def _residual(self, residual: Array, branch: Array,
                deterministic: bool) -> Array:
    branch = self.dropout(branch, deterministic=deterministic)
    return residual + self.drop_path(branch, deterministic)

  def _ffn(self, x: Array, deterministic: bool) -> Array:
    dtype = self.config.compute_dtype
    h = apply_ln(self.final_layer_norm, x, dtype)
    h = jax.nn.gelu(self.fc1(h).astype(jnp.float32), approximate=False)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = self.activation_dropout(h, deterministic=deterministic)
    h = apply_ln(self.ffn_layer_norm, h, dtype)
    return self._residual(x, self.fc2(h), deterministic)


class EncoderLayer(_LayerBase):
  """Pre-LN NormFormer encoder layer with per-layer relative-bias tables."""

  def setup(self):
    self._setup_common()

  def __call__(self, x: Array, abs_bias: Array, rel_index: Array, mask: Array,
               deterministic: bool) -> Array:
    dtype = self.config.compute_dtype
    bias = abs_bias + rel_bias(self.config, self.token_rel_pos_table,
                               self.image_rel_pos_table, rel_index)
    h = apply_ln(self.self_attn_layer_norm, x, dtype)
    h = self.self_attn(h, bias=bias, mask=mask, deterministic=deterministic)
    h = apply_ln(self.self_attn_mid_layer_norm, h, dtype)
    x = self._residual(x, h, deterministic)
    x = self._ffn(x, deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(_LayerBase):
  """Pre-LN NormFormer decoder layer: causal self-attn, cross-attn, FFN."""

  def setup(self):
    self._setup_common()
    cfg = self.config
    self.cross_attn = Attention(cfg)
    self.cross_attn_layer_norm = layer_norm(cfg)
    self.cross_attn_mid_layer_norm = layer_norm(cfg)

  def cross_kv(self, encoder_hidden: Array) -> tuple[Array, Array]:
    return self.cross_attn.project_kv(encoder_hidden)

  def __call__(self, x: Array, self_abs_bias: Array, rel_index: Array,
               self_mask: Array, cross_kv: tuple[Array, Array],
               cross_bias: Array, cross_mask: Array, deterministic: bool,
               decode: bool = False,
               cache_index: Optional[Array] = None) -> Array:
    dtype = self.config.compute_dtype
    bias = self_abs_bias + rel_bias(self.config, self.token_rel_pos_table,
                                    self.image_rel_pos_table, rel_index)
    h = apply_ln(self.self_attn_layer_norm, x, dtype)
    h = self.self_attn(h, bias=bias, mask=self_mask,
                       deterministic=deterministic, decode=decode,
                       cache_index=cache_index)
    h = apply_ln(self.self_attn_mid_layer_norm, h, dtype)
    x = self._residual(x, h, deterministic)
    h = apply_ln(self.cross_attn_layer_norm, x, dtype)
    h = self.cross_attn(h, bias=cross_bias, mask=cross_mask,
                        deterministic=deterministic, kv=cross_kv)
    h = apply_ln(self.cross_attn_mid_layer_norm, h, dtype)
    x = self._residual(x, h, deterministic)
    x = self._ffn(x, deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
