"""The VQGAN image tokenizer: pixels <-> a grid of discrete codes.

Why: OFA generates images as sequences of VQGAN codes; training the
generator needs ``encode_codes`` (targets) and sampling needs
``decode_codes`` (pictures), both inside jitted steps, so the model is a
plain Flax module with no host callbacks and no Python loops over the batch.
The wiring is taming-transformers' ``VQModel`` / ``GumbelVQ``::

  pixels -> encoder -> quant_conv -> quantize -> codes
  codes -> codebook vectors -> post_quant_conv -> decoder -> pixels

Pixels are NHWC float in [-1, 1]; ``VQGAN(cfg).apply(variables, x,
method=...)`` with ``method`` one of ``encode_codes``, ``decode_codes``,
``encode_features``, ``decode_features`` or the full ``__call__``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax.model.vqgan import modules
from ofa_jax.model.vqgan import quantize
from ofa_jax.model.vqgan.config import VQGANConfig


@flax.struct.dataclass
class VQOutput:
  """A training / evaluation forward pass.

  reconstruction: float32 [B, H, W, out_channels], not clipped.
  codes: int32 [B, h, w] (Gumbel in training: the sampled codes).
  quant_loss: the quantizer's own training term: codebook + beta *
    commitment ("vq"), beta * commitment ("ema"), gumbel_kl_weight * KL
    ("gumbel").
  codebook_loss / commitment_loss: the two mean squared errors (zero for
    "gumbel").
  perplexity: exp(entropy) of the batch's code histogram (codebook usage).
  """
  reconstruction: jax.Array
  codes: jax.Array
  quant_loss: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  perplexity: jax.Array


class VQGAN(nn.Module):
  """taming's VQGAN in Flax; ``dtype`` is the convolutions' compute dtype
  (parameters, codebook distances and losses stay float32)."""

  config: VQGANConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = modules.Encoder(cfg, self.dtype)
    self.quant_conv = modules.conv(cfg.embed_dim, 1, self.dtype)
    self.quantize = quantize.make_quantizer(cfg, self.dtype)
    self.post_quant_conv = modules.conv(cfg.z_channels, 1, self.dtype)
    self.decoder = modules.Decoder(cfg, self.dtype)

  def _check_pixels(self, pixels: jax.Array, where: str) -> None:
    cfg = self.config
    f = cfg.downsample_factor
    if (pixels.ndim != 4 or pixels.shape[-1] != cfg.in_channels
        or pixels.shape[1] % f or pixels.shape[2] % f
        or not pixels.shape[1] or not pixels.shape[2]):
      raise ValueError(
          f"VQGAN.{where}: expected pixels [B, H, W, {cfg.in_channels}] with "
          f"H and W positive multiples of {f}, got shape {tuple(pixels.shape)}")

  def _check_codes(self, codes: jax.Array, where: str) -> None:
    if codes.ndim != 3 or not jnp.issubdtype(codes.dtype, jnp.integer):
      raise ValueError(f"VQGAN.{where}: expected integer codes [B, h, w], got "
                       f"{codes.dtype} shape {tuple(codes.shape)}")

  def encode_features(self, pixels: jax.Array, *,
                      train: bool = False) -> jax.Array:
    """The quantizer's input, quant_conv(encoder(pixels)): [B,h,w,embed_dim]."""
    self._check_pixels(pixels, "encode_features")
    return self.quant_conv(self.encoder(pixels, train=train))

  def encode_codes(self, pixels: jax.Array) -> jax.Array:
    """Deterministic codes int32 [B, h, w] (Gumbel: argmax, no noise)."""
    return self.quantize.codes(self.encode_features(pixels))

  def decode_features(self, quantized: jax.Array, *,
                      train: bool = False) -> jax.Array:
    """Codebook vectors [B, h, w, embed_dim] -> float32 pixels (no clipping)."""
    return self.decoder(self.post_quant_conv(quantized), train=train)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """int codes [B, h, w] -> float32 pixels [B, h*f, w*f, out_channels]."""
    self._check_codes(codes, "decode_codes")
    vectors = self.quantize.lookup(codes.astype(jnp.int32))
    return self.decode_features(vectors.astype(self.dtype))

  def __call__(self, pixels: jax.Array, *, train: bool,
               temperature: Optional[float] = None) -> VQOutput:
    """Encode, quantize (with training noise / EMA updates when ``train``),
    decode. ``temperature`` overrides ``config.gumbel_temperature``."""
    features = self.encode_features(pixels, train=train)
    q = self.quantize(features, train=train, temperature=temperature)
    reconstruction = self.decode_features(q.quantized, train=train)
    return VQOutput(reconstruction, q.codes, q.quant_loss, q.codebook_loss,
                    q.commitment_loss, q.perplexity)


def abstract_variables(config: VQGANConfig) -> dict[str, Any]:
  """Shapes and dtypes of the variables (``jax.eval_shape``: nothing is
  computed). They do not depend on the image size: attention placement
  follows ``config.resolution``."""
  side = config.downsample_factor
  pixels = jax.ShapeDtypeStruct((1, side, side, config.in_channels),
                                jnp.float32)
  return jax.eval_shape(
      lambda x: nn.meta.unbox(dict(VQGAN(config).init(
          jax.random.PRNGKey(0), x, train=False))), pixels)


# How each variable starts: the same distributions as the modules' own
# initializers (see `init_variables`), keyed by (collection, leaf name).
_UNIFORM, _NORMAL, _ZEROS, _ONES, _COPY_EMA_EMBEDDING = range(5)


def _init_rule(collection: str, path: tuple[str, ...], shape: tuple[int, ...],
               config: VQGANConfig) -> tuple[int, float]:
  """(kind, scale) of one variable; unknown variables are refused so that a
  new one cannot silently start from the wrong distribution."""
  leaf = path[-1]
  if collection == "params":
    if leaf == "kernel":
      return _UNIFORM, modules.conv_kernel_bound(shape)
    if leaf == "bias":
      return _ZEROS, 0.0
    if leaf == "scale":
      return _ONES, 0.0
    if path == ("quantize", "embedding"):
      return _UNIFORM, quantize.codebook_bound(config.n_embed)
    if path == ("quantize", "embed"):
      return _NORMAL, 1.0
  elif collection == quantize.EMA_COLLECTION:
    if leaf == "embedding":
      return _NORMAL, 1.0
    if leaf == "cluster_size":
      return _ONES, 0.0
    if leaf == "embed_avg":
      return _COPY_EMA_EMBEDDING, 0.0
  raise ValueError(f"init_variables: no initial value known for "
                   f"{collection}/{'/'.join(path)}")


def init_variables(config: VQGANConfig, rng: jax.Array) -> dict[str, Any]:
  """``{"params"}`` (+ ``{"vq_ema"}``): what ``VQGAN(config).init`` gives, in
  distribution, compiled in about a second.

  Why not ``init`` itself: every initializer call is its own threefry
  program, and XLA:CPU needs tens of seconds to compile a few hundred of
  them; here all random numbers come from one uniform and one normal draw,
  sliced per variable. Same distributions (PyTorch-style conv kernels, zero
  biases, unit GroupNorm scales, taming's codebook inits), different values.
  """
  shapes = abstract_variables(config)
  leaves = {}
  for collection in shapes:
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        shapes[collection])[0]:
      names = tuple(str(k.key) for k in path)
      leaves[(collection,) + names] = (
          tuple(leaf.shape), _init_rule(collection, names, leaf.shape, config))

  sizes = {kind: sum(math.prod(shape) for shape, (k, _) in leaves.values()
                     if k == kind) for kind in (_UNIFORM, _NORMAL)}
  pools = dict(zip((_UNIFORM, _NORMAL), _random_pools(
      rng, sizes[_UNIFORM], sizes[_NORMAL])))
  traced = any(isinstance(p, jax.core.Tracer) for p in pools.values())
  # Concrete keys: slice on the host (slicing ops compile one by one, as
  # slowly as the initializers would); under a trace: ordinary jnp ops.
  xp = jnp if traced else np
  if not traced:
    pools = {kind: np.asarray(pool) for kind, pool in pools.items()}
  offsets = {_UNIFORM: 0, _NORMAL: 0}
  flat: dict[tuple[str, ...], Any] = {}
  for full_path, (shape, (kind, scale)) in leaves.items():
    if kind in pools:
      size = math.prod(shape)
      chunk = pools[kind][offsets[kind]:offsets[kind] + size]
      offsets[kind] += size
      flat[full_path] = chunk.reshape(shape) * np.float32(scale)
    elif kind == _ZEROS:
      flat[full_path] = xp.zeros(shape, np.float32)
    elif kind == _ONES:
      flat[full_path] = xp.ones(shape, np.float32)
  for full_path, (_, (kind, _)) in leaves.items():
    if kind == _COPY_EMA_EMBEDDING:
      flat[full_path] = flat[full_path[:-1] + ("embedding",)]
  out: dict[str, Any] = {}
  for full_path in leaves:  # the abstract tree's order
    node = out
    for name in full_path[:-1]:
      node = node.setdefault(name, {})
    node[full_path[-1]] = jnp.asarray(flat[full_path])
  return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _random_pools(rng: jax.Array, num_uniform: int,
                  num_normal: int) -> tuple[jax.Array, jax.Array]:
  """U(-1, 1) and N(0, 1) draws for all variables: two RNG programs in all."""
  uniform_key, normal_key = jax.random.split(rng)
  return (jax.random.uniform(uniform_key, (num_uniform,), jnp.float32,
                             -1.0, 1.0),
          jax.random.normal(normal_key, (num_normal,), jnp.float32))
