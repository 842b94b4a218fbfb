"""ofa_jax/model/conv.py: every formulation is the same convolution.

The reference is `lax.conv_general_dilated` (and torch's conv2d through the
ResNet parity tests); values and both gradients are compared, at the strides,
paddings and kernel sides OFA's ResNet uses, on odd sizes where a wrong
window offset or stride would show.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ofa_jax.model import config as config_lib
from ofa_jax.model import conv


def _reference(x, kernel, stride, padding):
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST)


CASES = [  # kernel, stride, padding, input channels, formulation
    (1, 1, 0, 8, "matmul"), (1, 2, 0, 8, "matmul"),
    (3, 1, 1, 5, "im2col"), (3, 2, 1, 5, "im2col"), (7, 2, 3, 3, "im2col"),
    (3, 1, 1, 8, "conv"), (3, 2, 1, 8, "conv"),
]


@pytest.mark.parametrize("kernel_size,stride,padding,cin,formulation", CASES)
def test_formulation_matches_the_convolution_and_its_gradients(
    kernel_size, stride, padding, cin, formulation):
  rs = np.random.RandomState(kernel_size * 10 + stride)
  x = jnp.asarray(rs.randn(2, 11, 9, cin).astype(np.float32))
  kernel = jnp.asarray(rs.randn(kernel_size, kernel_size, cin, 6)
                       .astype(np.float32))
  ours = lambda x, k: conv.conv2d(x, k, stride, padding, formulation)
  theirs = lambda x, k: _reference(x, k, stride, padding)
  y, y_ref = ours(x, kernel), theirs(x, kernel)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
  cotangent = jnp.asarray(rs.randn(*y.shape).astype(np.float32))
  grads = jax.vjp(ours, x, kernel)[1](cotangent)
  grads_ref = jax.vjp(theirs, x, kernel)[1](cotangent)
  for name, g, g_ref in zip(("input", "kernel"), grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4, err_msg=name)


def test_auto_picks_matmul_for_1x1_im2col_for_the_stem_conv_otherwise():
  assert conv.choose_formulation(1, 1024) == "matmul"
  assert conv.choose_formulation(7, 3) == "im2col"
  assert conv.choose_formulation(3, 64) == "conv"


def test_bad_formulations_are_refused_by_name():
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="1x1 kernel"):
    conv.conv2d(x, jnp.zeros((3, 3, 2, 2)), formulation="matmul")
  with pytest.raises(ValueError, match="unknown formulation 'fft'"):
    conv.conv2d(x, jnp.zeros((3, 3, 2, 2)), formulation="fft")
  with pytest.raises(ValueError, match="conv_formulation='fft'"):
    config_lib.get_config("tiny", conv_formulation="fft")


def test_module_has_nn_conv_parameters_and_output():
  """Same parameter tree as flax's nn.Conv, so checkpoints load unchanged."""
  x = jnp.asarray(np.random.RandomState(0).randn(2, 8, 8, 3), jnp.float32)
  ours = conv.Conv2D(4, 3, stride=2, padding=1)
  theirs = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  variables = theirs.init(jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, variables))
  np.testing.assert_allclose(ours.apply(variables, x),
                             theirs.apply(variables, x), rtol=1e-5, atol=1e-5)
