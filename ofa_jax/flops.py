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

from ofa_jax.model import adapters
from ofa_jax.model.config import OFAConfig
# The image path's shape and cost live with its adapter; re-exported here for
# the benchmarks.
from ofa_jax.model.adapters import num_patches, resnet_flops, resnet_grid  # pylint: disable=unused-import


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
    required = ("batch_size", "text_length", "decoder_length")
    bad = [f"{k}={getattr(self, k)}" for k in required if getattr(self, k) < 1]
    # The adapters' inputs (the fields after the token lengths) may be absent.
    bad += [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
            if f.name not in required and getattr(self, f.name) < 0]
    if bad:
      raise ValueError("Invalid StepShape: " + ", ".join(bad))

  def encoder_length(self, config: OFAConfig) -> int:
    """Text tokens plus the positions every configured adapter adds."""
    return self.text_length + sum(
        cls.encoder_positions(config, self) for _, cls in _costed(config))


def _costed(config: OFAConfig) -> list[tuple[str, type]]:
  """The configured adapters that declare their cost (`forward_flops`)."""
  return [(name, cls) for name, cls in adapters.configured(config)
          if hasattr(cls, "forward_flops")]


def forward_flops(config: OFAConfig, shape: StepShape) -> dict[str, int]:
  """Forward FLOPs of one batch by part, and their sum under "total"."""
  b = shape.batch_size
  s = shape.encoder_length(config)
  parts: dict[str, int] = {}
  for _, cls in _costed(config):
    parts.update(cls.forward_flops(config, shape))
  for k, v in encoder_flops(config, s).items():
    parts["encoder_" + k] = b * v
  for k, v in decoder_flops(config, shape.decoder_length, s).items():
    parts["decoder_" + k] = b * v
  parts["total"] = sum(parts.values())
  return parts


def train_step_flops(config: OFAConfig, shape: StepShape) -> int:
  """Model FLOPs of one training step (forward + backward, see module doc)."""
  fwd = forward_flops(config, shape)
  # An adapter's first layer reads data, which gets no gradient.
  data_parts = sum(fwd.get(getattr(cls, "data_input_part", ""), 0)
                   for _, cls in _costed(config))
  return 3 * fwd["total"] - data_parts


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
