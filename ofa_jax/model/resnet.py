"""OFA's image backbone: ResNet stem + stages 1-3 (V1.5 bottleneck), NHWC.

Parameter names mirror torchvision / OFA `models/ofa/resnet.py` (the module is
`encoder/images/embed_images` = torch `encoder.embed_images`):

  conv1/kernel [7,7,3,w]          = conv1.weight (OIHW -> HWIO)
  bn1/{scale,bias}, batch_stats bn1/{mean,var}
                                  = bn1.{weight,bias,running_mean,running_var}
  layer{s}_{b}/{conv1,bn1,conv2,bn2,conv3,bn3}   = layer{s}.{b}.*
  layer{s}_{b}/downsample_conv, downsample_bn    = layer{s}.{b}.downsample.{0,1}

The convolutions are `ofa_jax/model/conv.py`'s (nn.Conv's parameters, a
formulation per shape whose backward is fast on XLA:CPU), the max-pool
`ofa_jax/model/pooling.py`'s (a scatter-free backward).
Paddings are explicit (7×7/s2/p3 stem, 3×3/s2/p1 max-pool, p1 on 3×3 convs):
'SAME' would pad asymmetrically at stride 2 and shift every feature.
BatchNorm (`ofa_jax/model/batch_norm.py`) follows torch exactly: normalize
with the biased batch variance at train time, update the running variance with
the unbiased one (momentum 0.1), use running statistics at eval; eps 1e-5.
Statistics live in `batch_stats`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax.model.batch_norm import BatchNorm
from ofa_jax.model.config import OFAConfig
from ofa_jax.model.conv import Conv2D
from ofa_jax.model.layers import DropPath, partitioned
from ofa_jax.model.pooling import max_pool

Array = jax.Array


def _conv(config: OFAConfig, features: int, kernel: int, stride: int = 1,
          pad: int = 0, name: Optional[str] = None) -> Conv2D:
  return Conv2D(
      features, kernel, stride=stride, padding=pad, use_bias=False,
      dtype=config.compute_dtype, param_dtype=jnp.float32,
      kernel_init=partitioned(
          nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
          ("conv_height", "conv_width", "conv_in", "conv_out")),
      formulation=config.conv_formulation, name=name)


class Bottleneck(nn.Module):
  """V1.5 bottleneck: the stride sits on the 3×3 conv; expansion 4."""

  config: OFAConfig
  planes: int
  stride: int = 1
  downsample: bool = False
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    cfg = self.config
    out = nn.relu(BatchNorm(name="bn1")(_conv(cfg, self.planes, 1,
                                              name="conv1")(x), train))
    out = _conv(cfg, self.planes, 3, self.stride, 1, name="conv2")(out)
    out = nn.relu(BatchNorm(name="bn2")(out, train))
    out = _conv(cfg, self.planes * 4, 1, name="conv3")(out)
    out = BatchNorm(name="bn3")(out, train)
    identity = x
    if self.downsample:
      identity = _conv(cfg, self.planes * 4, 1, self.stride,
                       name="downsample_conv")(x)
      identity = BatchNorm(name="downsample_bn")(identity, train)
    out = identity + DropPath(self.drop_path_rate)(out, not train)
    return nn.relu(out)


class ResNet(nn.Module):
  """Images [N, H, W, 3] -> features [N, H/16, W/16, 16·width]."""

  config: OFAConfig

  @nn.compact
  def __call__(self, images: Array, train: bool) -> Array:
    cfg = self.config
    width = cfg.resnet_width
    x = images.astype(cfg.compute_dtype)
    x = _conv(cfg, width, 7, 2, 3, name="conv1")(x)
    x = nn.relu(BatchNorm(name="bn1")(x, train))
    x = max_pool(x, 3, 2, 1)
    inplanes = width
    for stage, blocks in enumerate(cfg.resnet_layers):
      planes = width * 2 ** stage
      stride = 1 if stage == 0 else 2
      rates = np.linspace(0.0, cfg.resnet_drop_path_rate, blocks)
      for b in range(blocks):
        x = Bottleneck(
            cfg, planes,
            stride=stride if b == 0 else 1,
            downsample=(b == 0 and (stride != 1 or inplanes != planes * 4)),
            # OFA's first block of a stage never drops its path.
            drop_path_rate=0.0 if b == 0 else float(rates[b]),
            name=f"layer{stage + 1}_{b}")(x, train)
        inplanes = planes * 4
    return nn.with_logical_constraint(
        x, ("batch", "image_height", "image_width", "conv_out"))
