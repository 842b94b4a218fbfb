"""Analytic FLOP count of the OFA network, for model-FLOPs utilization (MFU).

Why count by hand when XLA has `cost_analysis()`: MFU must not depend on how
the compiler happened to lower a step (fused elementwise ops, rematerialized
layers, padding, a backend that reports nothing). The model FLOPs are a property
of the network and the batch shape, so they are counted here from the config,
and the benchmark prints XLA's figure next to them as a cross-check.

Convention: only matrix products count (dense layers, convolutions, attention
scores and values, position-bias products, output logits), at 2 FLOPs per
multiply-add. LayerNorm, BatchNorm, softmax, GELU, the loss and the optimizer
update are elementwise and left out, as is usual for MFU; on the presets they
are a few percent of the total.

Training: the backward pass of every product costs twice its forward (the
gradient with respect to each operand), except the ResNet stem, whose input is
data and gets no gradient, so a step is 3x forward minus one stem.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ofa_jax.model.config import OFAConfig


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - kernel) // stride + 1


def resnet_grid(config: OFAConfig, image_size: int) -> int:
  """Side of the ResNet feature grid (patches per side) for a square image."""
  del config
  if image_size < 1:
    raise ValueError(f"image_size must be >= 1, got {image_size}")
  s = _conv_out(image_size, 7, 2, 3)  # stem conv
  s = _conv_out(s, 3, 2, 1)  # max-pool
  for stage in range(3):
    if stage:
      s = _conv_out(s, 3, 2, 1)  # the stride sits on the first 3x3 conv
  return s


def num_patches(config: OFAConfig, image_size: int) -> int:
  """Encoder positions one image occupies (196 at 224 px)."""
  return resnet_grid(config, image_size) ** 2


def resnet_flops(config: OFAConfig, image_size: int) -> dict[str, int]:
  """Forward FLOPs of the ResNet on one image: {"stem": ..., "blocks": ...}."""
  w = config.resnet_width
  s = _conv_out(image_size, 7, 2, 3)
  stem = 2 * s * s * 7 * 7 * 3 * w
  s = _conv_out(s, 3, 2, 1)
  blocks = 0
  inplanes = w
  for stage, num_blocks in enumerate(config.resnet_layers):
    planes = w * 2 ** stage
    for b in range(num_blocks):
      stride = 2 if (stage and b == 0) else 1
      so = _conv_out(s, 3, stride, 1)
      blocks += 2 * s * s * inplanes * planes  # conv1 1x1
      blocks += 2 * so * so * 9 * planes * planes  # conv2 3x3 (strided)
      blocks += 2 * so * so * planes * 4 * planes  # conv3 1x1
      if b == 0 and (stride != 1 or inplanes != 4 * planes):
        blocks += 2 * so * so * inplanes * 4 * planes  # downsample 1x1
      inplanes = 4 * planes
      s = so
  return {"stem": stem, "blocks": blocks}


def encoder_flops(config: OFAConfig, length: int) -> dict[str, int]:
  """Forward FLOPs of the transformer encoder over `length` positions (one example)."""
  d, f, n = config.d_model, config.ffn_dim, config.encoder_layers
  l = length
  return {
      # pos_q_linear, pos_k_linear, then (q·s)·kᵀ over heads.
      "position_bias": 2 * (2 * l * d * d) + 2 * l * l * d,
      "attention_proj": n * 4 * 2 * l * d * d,  # q, k, v, out
      "attention_scores": n * 2 * 2 * l * l * d,  # q·kᵀ and p·v
      "ffn": n * 2 * 2 * l * d * f,
  }


def decoder_flops(config: OFAConfig, length: int,
                  encoder_length: int) -> dict[str, int]:
  """Forward FLOPs of the decoder (teacher forcing) over `length` positions."""
  d, f, n = config.d_model, config.ffn_dim, config.decoder_layers
  l, s = length, encoder_length
  return {
      # self q/k, cross q (on l positions) + cross k (on s) linears; the
      # self (l×l) and cross (l×s) position logits.
      "position_bias": 2 * (3 * l * d * d + s * d * d) + 2 * l * l * d
                       + 2 * l * s * d,
      "attention_proj": n * (2 * (6 * l * d * d) + 2 * (2 * s * d * d)),
      "attention_scores": n * (2 * 2 * l * l * d + 2 * 2 * l * s * d),
      "ffn": n * 2 * 2 * l * d * f,
      "logits": 2 * l * d * config.vocab_size,
  }


@dataclasses.dataclass(frozen=True)
class StepShape:
  """The static shape of one training batch.

  text_length: encoder text tokens per example; the encoder sequence is
  text_length + num_images · patches(image_size).
  """

  batch_size: int
  text_length: int
  decoder_length: int
  num_images: int = 1
  image_size: int = 224

  def __post_init__(self):
    bad = [f"{k}={getattr(self, k)}" for k in
           ("batch_size", "text_length", "decoder_length")
           if getattr(self, k) < 1]
    bad += [f"{k}={getattr(self, k)}" for k in ("num_images", "image_size")
            if getattr(self, k) < 0]
    if bad:
      raise ValueError("Invalid StepShape: " + ", ".join(bad))

  def encoder_length(self, config: OFAConfig) -> int:
    if not self.num_images:
      return self.text_length
    return self.text_length + self.num_images * num_patches(config,
                                                            self.image_size)


def forward_flops(config: OFAConfig, shape: StepShape) -> dict[str, int]:
  """Forward FLOPs of one batch by part, and their sum under "total"."""
  b = shape.batch_size
  s = shape.encoder_length(config)
  parts: dict[str, int] = {}
  if shape.num_images:
    res = resnet_flops(config, shape.image_size)
    p = num_patches(config, shape.image_size)
    images = b * shape.num_images
    parts["resnet_stem"] = images * res["stem"]
    parts["resnet_blocks"] = images * res["blocks"]
    parts["image_proj"] = images * 2 * p * config.resnet_out_channels * (
        config.d_model)
  for k, v in encoder_flops(config, s).items():
    parts["encoder_" + k] = b * v
  for k, v in decoder_flops(config, shape.decoder_length, s).items():
    parts["decoder_" + k] = b * v
  parts["total"] = sum(parts.values())
  return parts


def train_step_flops(config: OFAConfig, shape: StepShape) -> int:
  """Model FLOPs of one training step (forward + backward, see module doc)."""
  fwd = forward_flops(config, shape)
  return 3 * fwd["total"] - fwd.get("resnet_stem", 0)


def xla_flops(compiled: Any) -> float:
  """The `flops` of a compiled executable's cost analysis (0.0 when absent).

  `cost_analysis()` is a dict on recent jax, a one-element list on older ones,
  and may be None on backends that do not implement it.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not isinstance(analysis, Mapping):
    return 0.0
  return float(analysis.get("flops", 0.0))
