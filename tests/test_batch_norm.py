"""ofa_jax/model/batch_norm.py: the closed-form backward is autodiff's.

The reference differentiates the plain expression (mean, biased variance,
normalize, scale, shift) with JAX's own autodiff; every input and the
cotangents of the returned statistics are random, so a dropped term of the
closed form (the mean's path, the variance's path, a wrong 1/n) shows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax.model import batch_norm


def _plain(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  y = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
  return y, mean, var


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (7, 2)])
def test_closed_form_gradients_match_autodiff(shape):
  rs = np.random.RandomState(len(shape))
  x = jnp.asarray(rs.randn(*shape) * 2.0 + 0.5, jnp.float32)
  scale = jnp.asarray(rs.rand(shape[-1]) + 0.5, jnp.float32)
  bias = jnp.asarray(rs.randn(shape[-1]), jnp.float32)
  cotangents = (jnp.asarray(rs.randn(*shape), jnp.float32),
                jnp.asarray(rs.randn(shape[-1]), jnp.float32),
                jnp.asarray(rs.randn(shape[-1]), jnp.float32))

  def grads(fn):
    out, vjp = jax.vjp(lambda *a: fn(*a, 1e-5), x, scale, bias)
    return out, vjp(cotangents)

  for wrap in (lambda f: f, jax.jit):
    ours = wrap(lambda: grads(batch_norm.normalize_with_batch_statistics))()
    theirs = wrap(lambda: grads(_plain))()
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_module_updates_running_statistics_like_torch():
  """Unbiased running variance, momentum 0.1; eval uses the running values."""
  x = jnp.asarray(np.random.RandomState(0).randn(4, 3, 3, 2) * 3 + 1,
                  jnp.float32)
  module = batch_norm.BatchNorm()
  variables = module.init(jax.random.key(0), x, True)
  y, updated = module.apply(variables, x, True, mutable=["batch_stats"])
  flat = np.asarray(x).reshape(-1, 2)
  np.testing.assert_allclose(updated["batch_stats"]["mean"],
                             0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["var"],
                             0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(y).reshape(-1, 2),
      (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), rtol=1e-4,
      atol=1e-5)
  y_eval = module.apply({**variables, **updated}, x, False)
  np.testing.assert_allclose(
      np.asarray(y_eval).reshape(-1, 2),
      (flat - 0.1 * flat.mean(0)) / np.sqrt(
          0.9 + 0.1 * flat.var(0, ddof=1) + 1e-5), rtol=1e-4, atol=1e-5)
