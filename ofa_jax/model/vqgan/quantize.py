"""The VQGAN's three quantizers: features -> discrete codes -> codebook vectors.

Why three: OFA's released tokenizer is a Gumbel-softmax VQGAN (its codes are
the argmax of a learned projection), taming's ImageNet VQGAN uses a nearest-
neighbour codebook trained by gradients ("vq"), and a small model trained
from scratch (the demo) learns fastest with a codebook that follows
exponential moving averages of the features assigned to it ("ema", as in
VQ-VAE-2), which needs no codebook gradient and rarely collapses.

All three share one interface (``QuantizerOutput`` from ``__call__``,
``codes`` for deterministic encoding, ``lookup`` for decoding) so that
``model.VQGAN`` never branches on the kind. Features are NHWC
``[B, h, w, embed_dim]``; codes are int32 ``[B, h, w]``. Distances and losses
are computed in float32 whatever the network's dtype.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ofa_jax.model.vqgan import modules
from ofa_jax.model.vqgan.config import VQGANConfig

EMA_COLLECTION = "vq_ema"
GUMBEL_RNG = "gumbel"


@flax.struct.dataclass
class QuantizerOutput:
  """What a quantizer gives the model in a forward pass.

  ``quantized`` carries straight-through gradients to the encoder;
  ``quant_loss`` is the quantizer's own training term (see the model's
  ``VQOutput``); codebook / commitment losses are zero for "gumbel".
  """
  quantized: jax.Array
  codes: jax.Array
  quant_loss: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  perplexity: jax.Array


def _flatten(z: jax.Array) -> jax.Array:
  return z.reshape(-1, z.shape[-1]).astype(jnp.float32)


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the closest codebook row (squared L2) for each feature vector.

  ``|z|^2 + |e|^2 - 2 z.e`` as taming computes it, at full float32 precision
  (a reduced-precision matmul on an accelerator could flip near ties).
  """
  flat = _flatten(z)
  codebook = codebook.astype(jnp.float32)
  distances = (jnp.sum(flat ** 2, axis=1, keepdims=True)
               + jnp.sum(codebook ** 2, axis=1)[None, :]
               - 2.0 * jnp.matmul(flat, codebook.T,
                                  precision=jax.lax.Precision.HIGHEST))
  return jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(z.shape[:-1])


def code_counts(codes: jax.Array, n_embed: int) -> jax.Array:
  """How many positions chose each code (float32 [n_embed]); a scatter-add,
  no [positions, n_embed] one-hot."""
  return jnp.zeros((n_embed,), jnp.float32).at[codes.reshape(-1)].add(1.0)


def perplexity_of(codes: jax.Array, n_embed: int) -> jax.Array:
  """exp(entropy) of the batch's code histogram: 1 (one code) .. n_embed."""
  probs = code_counts(codes, n_embed) / codes.size
  return jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))


def _check_features(z: jax.Array, embed_dim: int, where: str) -> None:
  if z.ndim != 4 or z.shape[-1] != embed_dim:
    raise ValueError(f"{where}: expected features [B, h, w, {embed_dim}], got "
                     f"shape {tuple(z.shape)}")


def _mse_terms(z: jax.Array, z_q: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(codebook loss: moves codes to features, commitment loss: moves features
  to codes), each a mean squared error with the other side held fixed."""
  z = z.astype(jnp.float32)
  z_q = z_q.astype(jnp.float32)
  codebook = jnp.mean((z_q - jax.lax.stop_gradient(z)) ** 2)
  commitment = jnp.mean((jax.lax.stop_gradient(z_q) - z) ** 2)
  return codebook, commitment


def _straight_through(z: jax.Array, z_q: jax.Array) -> jax.Array:
  """Forward value z_q, gradient to z as if the quantizer were the identity."""
  return z + jax.lax.stop_gradient(z_q.astype(z.dtype) - z)


def codebook_bound(n_embed: int) -> float:
  """taming's VectorQuantizer2 codebook init is U(-1/n, 1/n)."""
  return 1.0 / n_embed


def _codebook_init(n_embed: int):
  bound = codebook_bound(n_embed)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class VectorQuantizer(nn.Module):
  """Nearest-neighbour codebook trained by gradients (VectorQuantizer2).

  ``quant_loss = codebook + beta * commitment`` (``legacy_loss``:
  ``commitment + beta * codebook``, what taming's VQModel trained with).
  """

  n_embed: int
  embed_dim: int
  beta: float = 0.25
  legacy_loss: bool = False

  def setup(self):
    self.embedding = self.param("embedding", _codebook_init(self.n_embed),
                                (self.n_embed, self.embed_dim))

  def codes(self, z: jax.Array) -> jax.Array:
    _check_features(z, self.embed_dim, "VectorQuantizer.codes")
    return nearest_codes(z, self.embedding)

  def lookup(self, codes: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, codes, axis=0)

  def __call__(self, z: jax.Array, *, train: bool = False,
               temperature: Optional[float] = None) -> QuantizerOutput:
    del train, temperature  # deterministic; the interface is shared
    codes = self.codes(z)
    z_q = self.lookup(codes)
    codebook, commitment = _mse_terms(z, z_q)
    if self.legacy_loss:
      loss = commitment + self.beta * codebook
    else:
      loss = codebook + self.beta * commitment
    return QuantizerOutput(_straight_through(z, z_q), codes, loss, codebook,
                           commitment, perplexity_of(codes, self.n_embed))


class EMAVectorQuantizer(nn.Module):
  """Nearest-neighbour codebook that tracks its assigned features by EMA.

  State (collection ``vq_ema``): ``embedding`` [n, d] (the codebook),
  ``cluster_size`` [n] and ``embed_avg`` [n, d] (EMAs of the per-code counts
  and feature sums). With ``train=True`` and ``vq_ema`` mutable, after
  quantizing with the current codebook::

    cluster_size <- decay * cluster_size + (1 - decay) * counts
    embed_avg    <- decay * embed_avg    + (1 - decay) * feature sums
    n = sum(cluster_size)
    embedding = embed_avg / ((cluster_size + eps) / (n + K * eps) * n)

  (Laplace smoothing of the counts, VQ-VAE-2 / taming's EMAVectorQuantizer).
  ``cluster_size`` starts at one per code and ``embed_avg`` at the initial
  codebook (as if each code had been chosen once at its initial value), so a
  code that is never chosen keeps a finite vector instead of being divided
  by ~eps. Only the encoder is pulled, by ``beta * commitment``; the codebook
  loss is reported but has no gradient path.
  """

  n_embed: int
  embed_dim: int
  beta: float = 0.25
  decay: float = 0.99
  epsilon: float = 1e-5

  def setup(self):
    shape = (self.n_embed, self.embed_dim)
    self.embedding = self.variable(
        EMA_COLLECTION, "embedding",
        lambda: jax.random.normal(self.make_rng("params"), shape, jnp.float32))
    self.cluster_size = self.variable(
        EMA_COLLECTION, "cluster_size",
        lambda: jnp.ones((self.n_embed,), jnp.float32))
    self.embed_avg = self.variable(EMA_COLLECTION, "embed_avg",
                                   lambda: self.embedding.value)

  def codes(self, z: jax.Array) -> jax.Array:
    _check_features(z, self.embed_dim, "EMAVectorQuantizer.codes")
    return nearest_codes(z, self.embedding.value)

  def lookup(self, codes: jax.Array) -> jax.Array:
    return jnp.take(self.embedding.value, codes, axis=0)

  def __call__(self, z: jax.Array, *, train: bool = False,
               temperature: Optional[float] = None) -> QuantizerOutput:
    del temperature
    codes = self.codes(z)
    z_q = jax.lax.stop_gradient(self.lookup(codes))
    codebook, commitment = _mse_terms(z, z_q)
    counts = code_counts(codes, self.n_embed)
    if (train and self.is_mutable_collection(EMA_COLLECTION)
        and not self.is_initializing()):
      self._update(z, codes, counts)
    perplexity = jnp.exp(-jnp.sum(
        (counts / codes.size) * jnp.log(counts / codes.size + 1e-10)))
    return QuantizerOutput(_straight_through(z, z_q), codes,
                           self.beta * commitment, codebook, commitment,
                           perplexity)

  def _update(self, z: jax.Array, codes: jax.Array,
              counts: jax.Array) -> None:
    flat = jax.lax.stop_gradient(_flatten(z))
    sums = jnp.zeros((self.n_embed, self.embed_dim), jnp.float32).at[
        codes.reshape(-1)].add(flat)
    keep = self.decay
    cluster_size = keep * self.cluster_size.value + (1.0 - keep) * counts
    embed_avg = keep * self.embed_avg.value + (1.0 - keep) * sums
    total = jnp.sum(cluster_size)
    smoothed = ((cluster_size + self.epsilon)
                / (total + self.n_embed * self.epsilon) * total)
    self.cluster_size.value = cluster_size
    self.embed_avg.value = embed_avg
    self.embedding.value = embed_avg / smoothed[:, None]


class GumbelQuantizer(nn.Module):
  """Codes from a 1x1 projection to ``n_embed`` logits (GumbelQuantize).

  Deterministic use (``codes``, ``train=False``): the argmax of the logits and
  that code's vector. Training: hard Gumbel-softmax samples at
  ``temperature`` (noise from the "gumbel" rng stream) with straight-through
  gradients, so the vector is a one-hot mix of the codebook rows; plus
  ``kl_weight * KL(softmax(logits) || uniform)`` averaged over positions.
  """

  n_embed: int
  embed_dim: int
  kl_weight: float = 5e-4
  temperature: float = 1.0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.proj = modules.conv(self.n_embed, 1, self.dtype, "proj")
    self.embed = self.param("embed", nn.initializers.normal(1.0),
                            (self.n_embed, self.embed_dim))

  def logits(self, z: jax.Array) -> jax.Array:
    return self.proj(z).astype(jnp.float32)

  def codes(self, z: jax.Array) -> jax.Array:
    return jnp.argmax(self.logits(z), axis=-1).astype(jnp.int32)

  def lookup(self, codes: jax.Array) -> jax.Array:
    return jnp.take(self.embed, codes, axis=0)

  def __call__(self, z: jax.Array, *, train: bool = False,
               temperature: Optional[float] = None) -> QuantizerOutput:
    logits = self.logits(z)
    if train:
      temperature = self.temperature if temperature is None else temperature
      noise = jax.random.gumbel(self.make_rng(GUMBEL_RNG), logits.shape,
                                jnp.float32)
      soft = jax.nn.softmax((logits + noise) / temperature, axis=-1)
      codes = jnp.argmax(soft, axis=-1).astype(jnp.int32)
      hard = jax.nn.one_hot(codes, self.n_embed, dtype=jnp.float32)
      one_hot = hard + soft - jax.lax.stop_gradient(soft)
      quantized = jnp.einsum("bhwn,nd->bhwd", one_hot,
                             self.embed.astype(jnp.float32))
    else:
      codes = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      quantized = self.lookup(codes)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    # KL to the uniform prior: sum_n q log(q * n_embed), as taming (its 1e-10
    # guard is only there for log(0); log_softmax never produces it).
    kl = jnp.mean(jnp.sum(probs * (log_probs + jnp.log(float(self.n_embed))),
                          axis=-1))
    zero = jnp.zeros((), jnp.float32)
    return QuantizerOutput(quantized.astype(z.dtype), codes,
                           self.kl_weight * kl, zero, zero,
                           perplexity_of(codes, self.n_embed))


def make_quantizer(config: VQGANConfig, dtype=jnp.float32,
                   name: str = "quantize") -> nn.Module:
  """The quantizer ``config.quantizer`` names, under taming's attribute name."""
  if config.quantizer == "vq":
    return VectorQuantizer(config.n_embed, config.embed_dim, config.beta,
                           config.vq_legacy_loss, name=name)
  if config.quantizer == "ema":
    return EMAVectorQuantizer(config.n_embed, config.embed_dim, config.beta,
                              config.ema_decay, config.ema_epsilon, name=name)
  if config.quantizer == "gumbel":
    return GumbelQuantizer(config.n_embed, config.embed_dim,
                           config.gumbel_kl_weight, config.gumbel_temperature,
                           dtype, name=name)
  raise ValueError(f"make_quantizer: unknown quantizer {config.quantizer!r}")
