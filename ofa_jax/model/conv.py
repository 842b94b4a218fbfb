"""2-D convolution (NHWC / HWIO) formulated for a fast backward on XLA:CPU.

Why not `flax.linen.Conv` as is: XLA:CPU computes a convolution's *kernel*
gradient as a convolution whose "kernel" is the whole output map, and that
runs 4-10x slower than the same contraction written as a matmul. Measured on
2 cores of an AMD EPYC (batch 8, 224 px, the convolutions of OFA's ResNet-101
stages): forward 1.16 s and input gradients 1.17 s, but kernel gradients
4.24 s, 3.15 s of it in the 1x1 convolutions, whose kernel gradient is one
[C_in, N·H·W] x [N·H·W, C_out] matmul; the 7x7 stem over 3 channels alone
took 0.2-0.3 s. So the layer picks, per shape, the formulation whose
forward *and* automatic backward are fast:

* 1x1 kernels (any stride): a strided slice, then a matmul over channels:
  forward, input and kernel gradients are all matmuls.
* few input channels (the stem: 3): im2col, the k·k shifted windows
  concatenated on the channel axis, then one matmul with K = k·k·C_in;
  the patches are small and the kernel gradient is again a matmul.
* otherwise (3x3 over many channels): `lax.conv_general_dilated`, which
  XLA:CPU runs near the matmul peak in both directions for these shapes.

Every formulation computes the same function (to float rounding; the parity
tests against OFA's PyTorch ResNet hold at 1e-5), takes the parameters of
`nn.Conv` (`kernel` [kh, kw, C_in, C_out], optional `bias`), so checkpoints
and the conversion tables do not change. `formulation` forces one, for tests
and benchmarks.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

FORMULATIONS = ("auto", "matmul", "im2col", "conv")
# im2col pays k·k copies of the input; worth it only while the patches stay
# narrow (the stem: 7·7·3 = 147 columns).
IM2COL_MAX_INPUT_CHANNELS = 16


def choose_formulation(kernel_size: int, in_channels: int) -> str:
  """The formulation `auto` picks for a kernel side and input width."""
  if kernel_size == 1:
    return "matmul"
  if in_channels <= IM2COL_MAX_INPUT_CHANNELS:
    return "im2col"
  return "conv"


def _windows(x: Array, kernel_size: int, stride: int, padding: int) -> list[Array]:
  """The k·k strided windows of the padded input, each [N, Ho, Wo, C]."""
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  n, h, w, c = x.shape
  ho = (h - kernel_size) // stride + 1
  wo = (w - kernel_size) // stride + 1
  return [lax.slice(x, (0, i, j, 0),
                    (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                    (1, stride, stride, 1))
          for i in range(kernel_size) for j in range(kernel_size)]


def conv2d(x: Array, kernel: Array, stride: int = 1, padding: int = 0,
           formulation: str = "auto") -> Array:
  """y[n, h, w, o] = Σ x_pad[n, s·h + i, s·w + j, c] · kernel[i, j, c, o]."""
  kh, kw, cin, cout = kernel.shape
  if kh != kw:
    raise ValueError(f"conv2d: square kernels only, got {kernel.shape}")
  if formulation == "auto":
    formulation = choose_formulation(kh, cin)
  if formulation == "matmul":
    if kh != 1:
      raise ValueError(f"conv2d: the matmul formulation needs a 1x1 kernel, "
                       f"got {kh}x{kw}")
    (window,) = _windows(x, 1, stride, padding)
    return jnp.einsum("nhwc,co->nhwo", window, kernel[0, 0])
  if formulation == "im2col":
    patches = jnp.concatenate(_windows(x, kh, stride, padding), axis=-1)
    return jnp.einsum("nhwk,ko->nhwo", patches,
                      kernel.reshape(kh * kw * cin, cout))
  if formulation == "conv":
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  raise ValueError(f"conv2d: unknown formulation {formulation!r}; "
                   f"known: {FORMULATIONS}")


class Conv2D(nn.Module):
  """A square-kernel convolution with `nn.Conv`'s parameters and semantics.

  Symmetric explicit padding only (what OFA's ResNet and taming's VQGAN use).
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  formulation: str = "auto"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
               self.padding, self.formulation)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y

