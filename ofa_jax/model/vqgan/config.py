"""The VQGAN image tokenizer's hyper-parameters, validated once, JSON-able.

Why a separate frozen dataclass: the same description must build the Flax
network, name the PyTorch checkpoint it converts from, and travel next to a
saved checkpoint (``vqgan_config.json``) so that a loader needs no arguments.
Mistakes (channels GroupNorm(32) cannot split, a resolution the encoder cannot
halve evenly, a Gumbel quantizer whose projection cannot read the encoder's
output) are refused here, by name, instead of as an obscure shape error deep
inside ``init``.

Defaults are OFA's released OpenImages tokenizer (taming-transformers'
``GumbelVQ``, f=8, 8192 codes: 256 px images -> 32x32 codes).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Mapping

QUANTIZERS = ("gumbel", "vq", "ema")
GROUP_NORM_GROUPS = 32


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Architecture and quantizer settings of a taming-transformers VQGAN.

  Attributes:
    resolution: the training image side (pixels); attention placement is
      decided from it (``attn_resolutions`` are feature-map sides).
    in_channels / out_channels: image channels in / out.
    ch: base channel count; level ``i`` has ``ch * ch_mult[i]`` channels.
    ch_mult: per-level channel multipliers; ``len(ch_mult) - 1`` halvings.
    num_res_blocks: ResnetBlocks per encoder level (the decoder has one more).
    attn_resolutions: feature-map sides at which AttnBlocks follow the
      ResnetBlocks (the middle block always has one).
    dropout: dropout rate inside ResnetBlocks (rng stream "dropout").
    z_channels: encoder output / decoder input channels.
    embed_dim: codebook vector size (quant_conv maps z_channels -> embed_dim).
    n_embed: number of codes.
    quantizer: "gumbel" (taming's GumbelQuantize), "vq" (VectorQuantizer2,
      gradient-trained codebook) or "ema" (codebook from exponential moving
      averages, as in VQ-VAE-2).
    beta: commitment weight ("vq", "ema").
    vq_legacy_loss: "vq" only: weigh the codebook term with ``beta`` instead
      of the commitment term, as taming's ``VectorQuantizer2(legacy=True)``
      (what its ``VQModel`` trained with). Codes and outputs are unaffected.
    gumbel_kl_weight: weight of the KL-to-uniform-prior term ("gumbel").
    gumbel_temperature: Gumbel-softmax temperature during training.
    ema_decay / ema_epsilon: EMA decay and Laplace smoothing ("ema").
  """

  resolution: int = 256
  in_channels: int = 3
  out_channels: int = 3
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (32,)
  dropout: float = 0.0
  z_channels: int = 256
  embed_dim: int = 256
  n_embed: int = 8192
  quantizer: str = "gumbel"
  beta: float = 0.25
  gumbel_kl_weight: float = 5e-4
  gumbel_temperature: float = 1.0
  ema_decay: float = 0.99
  ema_epsilon: float = 1e-5
  vq_legacy_loss: bool = False

  def __post_init__(self):
    # JSON gives lists; the dataclass must stay hashable and comparable.
    for name in ("ch_mult", "attn_resolutions"):
      value = getattr(self, name)
      if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"VQGANConfig.{name}: expected a sequence of ints, "
                         f"got {value!r}")
      object.__setattr__(self, name, tuple(value))
    self._validate()

  def _validate(self) -> None:
    def fail(message: str) -> None:
      raise ValueError(f"VQGANConfig: {message}")

    for name in ("resolution", "in_channels", "out_channels", "ch",
                 "num_res_blocks", "z_channels", "embed_dim", "n_embed"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        fail(f"{name} must be a positive int, got {value!r}")
    if not self.ch_mult:
      fail("ch_mult must name at least one level")
    for i, mult in enumerate(self.ch_mult):
      if isinstance(mult, bool) or not isinstance(mult, int) or mult <= 0:
        fail(f"ch_mult[{i}] must be a positive int, got {mult!r}")
      if (self.ch * mult) % GROUP_NORM_GROUPS:
        fail(f"level {i} has ch * ch_mult[{i}] = {self.ch * mult} channels, "
             f"not a multiple of the {GROUP_NORM_GROUPS} GroupNorm groups")
    if self.ch % GROUP_NORM_GROUPS:
      fail(f"ch={self.ch} is not a multiple of the {GROUP_NORM_GROUPS} "
           "GroupNorm groups")
    for i, side in enumerate(self.attn_resolutions):
      if isinstance(side, bool) or not isinstance(side, int) or side <= 0:
        fail(f"attn_resolutions[{i}] must be a positive int, got {side!r}")
    if self.resolution % self.downsample_factor:
      fail(f"resolution={self.resolution} is not divisible by the downsample "
           f"factor {self.downsample_factor} "
           f"(len(ch_mult)={len(self.ch_mult)})")
    if not 0.0 <= self.dropout < 1.0:
      fail(f"dropout must be in [0, 1), got {self.dropout!r}")
    if self.quantizer not in QUANTIZERS:
      fail(f"quantizer={self.quantizer!r}; expected one of {QUANTIZERS}")
    if self.quantizer == "gumbel" and self.embed_dim != self.z_channels:
      # taming's GumbelVQ feeds quant_conv's embed_dim channels to a
      # projection built for z_channels inputs: they must agree.
      fail(f"quantizer='gumbel' needs embed_dim == z_channels (got "
           f"embed_dim={self.embed_dim}, z_channels={self.z_channels})")
    if self.beta < 0:
      fail(f"beta must be >= 0, got {self.beta!r}")
    if self.gumbel_kl_weight < 0:
      fail(f"gumbel_kl_weight must be >= 0, got {self.gumbel_kl_weight!r}")
    if self.gumbel_temperature <= 0:
      fail(f"gumbel_temperature must be > 0, got {self.gumbel_temperature!r}")
    if not 0.0 < self.ema_decay < 1.0:
      fail(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
    if self.ema_epsilon <= 0:
      fail(f"ema_epsilon must be > 0, got {self.ema_epsilon!r}")

  @property
  def downsample_factor(self) -> int:
    """Pixels per code along each side."""
    return 2 ** (len(self.ch_mult) - 1)

  @property
  def num_levels(self) -> int:
    return len(self.ch_mult)

  def grid_side(self, image_size: int) -> int:
    """Codes per side for square ``image_size`` images."""
    if image_size <= 0 or image_size % self.downsample_factor:
      raise ValueError(
          f"VQGANConfig.grid_side: image size {image_size} is not a positive "
          f"multiple of the downsample factor {self.downsample_factor}")
    return image_size // self.downsample_factor

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["ch_mult"] = list(self.ch_mult)
    out["attn_resolutions"] = list(self.attn_resolutions)
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "VQGANConfig":
    if not isinstance(d, Mapping):
      raise ValueError(f"VQGANConfig.from_dict: expected a mapping, got "
                       f"{type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"VQGANConfig.from_dict: unknown field(s) {unknown}; "
                       f"known: {sorted(known)}")
    return cls(**dict(d))


PRESETS: Mapping[str, VQGANConfig] = types.MappingProxyType({
    # OFA's OpenImages tokenizer (taming's vqgan_gumbel_f8_8192).
    "f8_8192": VQGANConfig(),
    # taming's ImageNet VQGAN (vqgan_imagenet_f16_16384).
    "f16_16384": VQGANConfig(
        ch_mult=(1, 1, 2, 2, 4), attn_resolutions=(16,), n_embed=16384,
        z_channels=256, embed_dim=256, quantizer="vq"),
    # Tiny, for the 2-core demo: 32 px -> 4x4 codes out of 256 (a 64 px, f=16
    # network did not reach a recognisable reconstruction in minutes on 2 cores).
    "demo": VQGANConfig(
        resolution=32, ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1,
        attn_resolutions=(), z_channels=64, embed_dim=64, n_embed=256,
        quantizer="ema"),
})


def get_config(name: str, **overrides: Any) -> VQGANConfig:
  """A preset by name, with field overrides (validated)."""
  if name not in PRESETS:
    raise ValueError(f"unknown VQGAN preset {name!r}; known: {sorted(PRESETS)}")
  known = {f.name for f in dataclasses.fields(VQGANConfig)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"get_config({name!r}): unknown field(s) {unknown}")
  return dataclasses.replace(PRESETS[name], **overrides)
