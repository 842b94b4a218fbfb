"""ofa_jax/model/pooling.py: torch's max pooling, forward and gradient.

The reference is `torch.nn.functional.max_pool2d` (OFA's stem pooling): its
gradient goes to the first maximum of each window, which matters on ReLU
outputs full of tied zeros; flax's `max_pool` checks the forward and the
tie-free gradient as a second reference.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax.model import pooling

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("kernel,stride,padding,size", [
    (3, 2, 1, 9), (3, 2, 1, 10), (2, 2, 0, 8), (3, 1, 1, 5)])
def test_forward_and_gradient_match_torch_with_ties(kernel, stride, padding,
                                                    size):
  torch = pytest.importorskip("torch")
  rs = np.random.RandomState(size)
  # ReLU-like input: about half exact zeros, so windows tie.
  x = np.maximum(rs.randn(2, size, size + 1, 3), 0).astype(np.float32)
  ours, vjp = jax.vjp(lambda v: pooling.max_pool(v, kernel, stride, padding),
                      jnp.asarray(x))
  dy = rs.randn(*ours.shape).astype(np.float32)
  (dx,) = vjp(jnp.asarray(dy))
  with torch.enable_grad():  # whatever an earlier test left switched
    xt = torch.tensor(x.transpose(0, 3, 1, 2)).requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, stride, padding)
    (dxt,) = torch.autograd.grad(yt, xt,
                                 torch.tensor(dy.transpose(0, 3, 1, 2)))
  np.testing.assert_array_equal(ours, yt.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(dx, dxt.numpy().transpose(0, 2, 3, 1), atol=1e-6)


def test_matches_flax_on_distinct_values():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 12, 12, 4), jnp.float32)
  pool = lambda v: pooling.max_pool(v, 3, 2, 1)
  theirs = lambda v: nn.max_pool(v, (3, 3), strides=(2, 2),
                                 padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(jax.jit(pool)(x), theirs(x))
  dy = jnp.asarray(np.random.RandomState(1).randn(*theirs(x).shape),
                   jnp.float32)
  np.testing.assert_allclose(jax.vjp(pool, x)[1](dy)[0],
                             jax.vjp(theirs, x)[1](dy)[0], atol=1e-6)
