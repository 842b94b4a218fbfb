"""torch.nn.BatchNorm2d semantics in Flax, with a closed-form backward.

Why a custom VJP: differentiating the normalization as written (mean, then the
variance of the centred input, then scale) makes XLA:CPU walk the activation
many times in the backward pass; the textbook closed form needs two reductions
(Σdy, Σdy·x̂) and one elementwise pass. Measured on 2 AMD EPYC cores at
[8, 56, 56, 256] (a ResNet stage-1 map): forward + backward 54 ms as written,
14 ms in closed form (torch: 31 ms). The result is the same function: the
gradients agree to float rounding (tests/test_batch_norm.py checks them against
autodiff of the plain expression, statistics cotangents included).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax.model.layers import partitioned

Array = jax.Array


def _statistics(x: Array) -> tuple[Array, Array]:
  """Per-channel mean and biased variance over all but the last axis."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  return mean, jnp.mean(jnp.square(x - mean), axis=axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_with_batch_statistics(x: Array, scale: Array, bias: Array,
                                    epsilon: float
                                    ) -> tuple[Array, Array, Array]:
  """(y, mean, biased variance) of float32 `x` normalized over its batch."""
  return _normalize_forward(x, scale, bias, epsilon)[0]


def _normalize_forward(x, scale, bias, epsilon):
  mean, var = _statistics(x)
  inv_std = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inv_std * scale) + bias
  return (y, mean, var), (x, mean, inv_std, scale)


def _normalize_backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv_std, scale = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x - mean
  x_hat = centred * inv_std
  dbias = jnp.sum(dy, axis=axes)
  dscale = jnp.sum(dy * x_hat, axis=axes)
  # d/dx of y (through x̂, the mean and the variance), plus the statistics'
  # own cotangents: d mean/dx = 1/n, d var/dx = 2 (x - mean)/n.
  dx = (scale * inv_std) * (dy - (dbias + x_hat * dscale) / n)
  dx = dx + dmean / n + dvar * (2.0 / n) * centred
  return dx, dscale, dbias


normalize_with_batch_statistics.defvjp(_normalize_forward, _normalize_backward)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d semantics over the channel (last) axis, float32 math.

  Train mode normalizes with the biased batch variance and updates the running
  variance with the unbiased one (momentum 0.1); eval mode uses the running
  statistics; eps 1e-5. Statistics live in `batch_stats`.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", partitioned(nn.initializers.ones, ("conv_out",)),
                       (features,), jnp.float32)
    bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                      (features,), jnp.float32)
    mean_v = self.variable("batch_stats", "mean", jnp.zeros, (features,),
                           jnp.float32)
    var_v = self.variable("batch_stats", "var", jnp.ones, (features,),
                          jnp.float32)
    xf = x.astype(jnp.float32)
    if not train:
      y = ((xf - mean_v.value) * jax.lax.rsqrt(var_v.value + self.epsilon)
           * scale + bias)
      return y.astype(x.dtype)
    y, mean, var = normalize_with_batch_statistics(xf, scale, bias,
                                                   self.epsilon)
    if not self.is_initializing():
      n = int(np.prod(x.shape[:-1]))
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      mean_v.value = (1 - m) * mean_v.value + m * jax.lax.stop_gradient(mean)
      var_v.value = (1 - m) * var_v.value + m * jax.lax.stop_gradient(unbiased)
    return y.astype(x.dtype)
