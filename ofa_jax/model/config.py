"""OFAConfig and the size presets (tiny ... huge, plus a CPU-sized `demo`).

Why a frozen dataclass of plain values: the config is hashed into jit caches and
flax module attributes, is written to `config.gin` by the trainer, and must be
selectable from gin as `get_config("base", dtype="bfloat16")` without touching
source. Sizes follow OFA-Sys/OFA `models/ofa/ofa.py` (see
docs/ofa_architecture.md §1); defaults are the flags every released OFA
checkpoint was trained with.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax.numpy as jnp

_DTYPES = ("float32", "bfloat16")
# The names of `ofa_jax.model.remat`'s policies (listed here so that the config
# validates without importing the model).
REMAT_POLICIES = ("none", "full", "dots_saveable", "minimal")
# The padding of gin runs (gin/models/common.gin `VOCAB_PAD_MULTIPLE`) and of
# the OFA checkpoint converter: a multiple of 128 splits over up to 128 model
# shards and keeps TPU lanes full. The dataclass default stays 1 (OFA's shapes).
DEFAULT_VOCAB_PAD_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class OFAConfig:
  """Hyper-parameters of the OFA encoder-decoder.

  Attributes (non-obvious ones):
    resnet_layers: blocks in ResNet stages 1-3 (stage 4 is never built).
    resnet_width: channels of the stem; stage widths are width·(1, 2, 4) and the
      output has 16·width channels (1024 for OFA's 64). The demo shrinks it.
    num_type_embeddings: rows of the encoder type embedding (0 = text,
      1 = image patches; later adapters may use further rows).
    code_image_size: pixel size of target images whose VQ codes the decoder
      emits; the code grid is code_image_size // code_downsample on a side.
    code_downsample: the VQGAN's downsampling factor (8 for OFA's tokenizer).
    image_tokenizer: the VQGAN architecture of the `target_image` head: a
      preset of `ofa_jax.model.vqgan` ("f8_8192": OFA's OpenImages tokenizer,
      "f16_16384", "demo") or a JSON object of `VQGANConfig` fields. Its trained
      weights come from a VQGAN directory (`OFAModel(target_head_dirs=...)`).
    dtype: compute dtype. Params stay float32; softmax, LayerNorm and logits are
      float32 whatever this is.
    remat: rematerialize each transformer layer in the backward pass (the
      same as remat_policy="full"; kept for configs written before the policies).
    remat_policy: what the backward pass of each transformer layer recomputes
      instead of keeping (`ofa_jax/model/remat.py`): "none" (keep everything),
      "full" (keep only the layer's inputs), "dots_saveable" (keep every matmul
      output) or "minimal" (keep only the weight matmuls' outputs, recompute the
      attention scores and elementwise ops). Same numbers, other memory/time.
    vocab_pad_multiple: the shared embedding (and so the logits) gets
      `padded_vocab_size` rows, `vocab_size` rounded up to this multiple, so the
      vocabulary axis splits over 2, 4, 8... model shards (OFA's 59457 ids split
      over none). The padded ids are never read (no token has them) and never
      produced: the decoder sets their logits to the float32 minimum. 1 = no
      padding (OFA's exact shapes); gin's `VOCAB_PAD_MULTIPLE` sets 128.
    conv_formulation: how the ResNet's convolutions are computed
      (`ofa_jax/model/conv.py`): "auto" (1x1 as matmuls, the stem as im2col,
      3x3 as XLA convolutions: the fast backward on XLA:CPU) or "conv" (all
      as XLA convolutions, for comparison). Same function, same parameters.
    use_dot_product_attention: route attention through
      `jax.nn.dot_product_attention` (with OFA's additive bias) where no
      attention-probability dropout is needed.
    encoder_adapters: names of encoder adapters (`ofa_jax/model/registry.py`,
      one per input stream) whose dense inputs the encoder embeds, in addition
      to text tokens.
    target_heads: names of target heads (`ofa_jax/model/registry.py`, one per
      dense target stream) the model trains. A task whose instruction uses a
      stream without its adapter or head here is refused before training.
    entangle_position_embedding: OFA's flag of the same name: also ADD the raw
      absolute position embeddings (text, image patch, decoder text / code) to
      the token streams before their embedding LayerNorms, so that the values
      (not only the attention logits) carry position. Every released OFA
      checkpoint was trained without it (`--disable-entangle`); a model trained
      from scratch that must read coordinates (boxes) learns faster with it.
    ordered_init: initialize the `<bin_k>` rows of the shared embedding (the
      last `num_bins` rows: the embedding must hold exactly the vocabulary's
      ids) and the image position tables as smooth sinusoids of the bin index /
      patch row and column, so that near bins and near patches start near each
      other. Only for training from scratch (a checkpoint overwrites it): with
      OFA's i.i.d. normal init every bin is an unrelated class, and a small model
      trained from scratch fits the box prior for hundreds of steps before it
      starts reading the image (measured on the demo's grounding task).
  """

  vocab_size: int = 59457
  d_model: int = 256
  encoder_layers: int = 4
  decoder_layers: int = 4
  attention_heads: int = 4
  ffn_dim: int = 1024
  resnet_layers: tuple[int, int, int] = (3, 4, 6)
  resnet_width: int = 64
  max_source_positions: int = 1024
  max_target_positions: int = 1024
  token_bucket_size: int = 256
  image_bucket_size: int = 42
  attn_scale_factor: float = 2.0
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  encoder_drop_path_rate: float = 0.0
  decoder_drop_path_rate: float = 0.0
  resnet_drop_path_rate: float = 0.0
  num_codes: int = 8192
  num_bins: int = 1000
  code_image_size: int = 128
  code_downsample: int = 8
  image_tokenizer: str = "f8_8192"
  num_type_embeddings: int = 2
  layer_norm_eps: float = 1e-5
  init_std: float = 0.02
  pad_id: int = 1
  dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "none"
  vocab_pad_multiple: int = 1
  conv_formulation: str = "auto"
  use_dot_product_attention: bool = False
  encoder_adapters: tuple[str, ...] = ("images",)
  target_heads: tuple[str, ...] = ()
  entangle_position_embedding: bool = False
  ordered_init: bool = False

  def __post_init__(self):
    problems = []
    if self.dtype not in _DTYPES:
      problems.append(f"dtype={self.dtype!r} (expected one of {_DTYPES})")
    if self.d_model % self.attention_heads:
      problems.append(f"d_model={self.d_model} is not divisible by "
                      f"attention_heads={self.attention_heads}")
    if len(tuple(self.resnet_layers)) != 3 or min(self.resnet_layers) < 1:
      problems.append(f"resnet_layers={self.resnet_layers!r} (need 3 ints >= 1)")
    if self.token_bucket_size % 2 or self.token_bucket_size < 4:
      problems.append(f"token_bucket_size={self.token_bucket_size} (need an even "
                      "number >= 4)")
    if self.ordered_init and not 0 < self.num_bins < self.vocab_size:
      problems.append(f"ordered_init needs 0 < num_bins={self.num_bins} < "
                      f"vocab_size={self.vocab_size}")
    if self.code_downsample < 1 or self.code_image_size % self.code_downsample:
      problems.append(f"code_image_size={self.code_image_size} is not a multiple "
                      f"of code_downsample={self.code_downsample}")
    if self.conv_formulation not in ("auto", "conv"):
      problems.append(f"conv_formulation={self.conv_formulation!r} (expected "
                      "'auto' or 'conv')")
    if self.vocab_pad_multiple < 1:
      problems.append(f"vocab_pad_multiple={self.vocab_pad_multiple} (need an "
                      "int >= 1; 1 = no padding)")
    if self.remat_policy not in REMAT_POLICIES:
      problems.append(f"remat_policy={self.remat_policy!r} (expected one of "
                      f"{REMAT_POLICIES})")
    elif self.remat and self.remat_policy not in ("none", "full"):
      problems.append(f"remat=True (= remat_policy 'full') contradicts "
                      f"remat_policy={self.remat_policy!r}; set only remat_policy")
    if self.vocab_size <= self.pad_id:
      problems.append(f"vocab_size={self.vocab_size} <= pad_id={self.pad_id}")
    for name in ("dropout", "attention_dropout", "activation_dropout",
                 "encoder_drop_path_rate", "decoder_drop_path_rate",
                 "resnet_drop_path_rate"):
      rate = getattr(self, name)
      if not 0.0 <= rate < 1.0:
        problems.append(f"{name}={rate} (need 0 <= rate < 1)")
    if problems:
      raise ValueError("Invalid OFAConfig: " + "; ".join(problems))
    # Accept lists (gin, json) but keep the dataclass hashable.
    object.__setattr__(self, "resnet_layers", tuple(self.resnet_layers))
    object.__setattr__(self, "encoder_adapters", tuple(self.encoder_adapters))
    object.__setattr__(self, "target_heads", tuple(self.target_heads))

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the shared embedding: vocab_size up to a multiple of vocab_pad_multiple."""
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m

  @property
  def layer_remat_policy(self) -> str:
    """The remat policy in force ("full" when only the older `remat` is set)."""
    if self.remat and self.remat_policy == "none":
      return "full"
    return self.remat_policy

  @property
  def head_dim(self) -> int:
    return self.d_model // self.attention_heads

  @property
  def scaling(self) -> float:
    """OFA's (head_dim · attn_scale_factor)^-0.5, for content and position logits."""
    return float(self.head_dim * self.attn_scale_factor) ** -0.5

  @property
  def compute_dtype(self) -> Any:
    return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

  @property
  def resnet_out_channels(self) -> int:
    return 16 * self.resnet_width

  @property
  def code_grid_size(self) -> int:
    return self.code_image_size // self.code_downsample

  def replace(self, **overrides) -> "OFAConfig":
    return dataclasses.replace(self, **overrides)


_PRESETS = types.MappingProxyType({
    # name: (enc L, dec L, d, heads, ResNet stages 1-3); FFN = 4·d everywhere.
    "tiny": dict(encoder_layers=4, decoder_layers=4, d_model=256,
                 attention_heads=4, ffn_dim=1024, resnet_layers=(3, 4, 6)),
    "medium": dict(encoder_layers=4, decoder_layers=4, d_model=512,
                   attention_heads=8, ffn_dim=2048, resnet_layers=(3, 4, 23)),
    "base": dict(encoder_layers=6, decoder_layers=6, d_model=768,
                 attention_heads=12, ffn_dim=3072, resnet_layers=(3, 4, 23)),
    "large": dict(encoder_layers=12, decoder_layers=12, d_model=1024,
                  attention_heads=16, ffn_dim=4096, resnet_layers=(3, 8, 36)),
    "huge": dict(encoder_layers=24, decoder_layers=12, d_model=1280,
                 attention_heads=16, ffn_dim=5120, resnet_layers=(3, 8, 36)),
    # Not an OFA size: small enough to train on 2 CPU cores in minutes at
    # 64-96 px images (stride 16 gives 16-36 patches). Pair it with a small
    # vocabulary through `vocab_size=`.
    "demo": dict(encoder_layers=2, decoder_layers=2, d_model=128,
                 attention_heads=4, ffn_dim=512, resnet_layers=(1, 1, 1),
                 resnet_width=16, max_source_positions=256,
                 max_target_positions=256, code_image_size=64),
})

PRESET_NAMES = tuple(_PRESETS)


def get_config(name: str, **overrides) -> OFAConfig:
  """The preset `name` (tiny, medium, base, large, huge, demo) with overrides.

  Plain strings and numbers in, so gin can call it:
  `get_config("tiny", vocab_size=4000, dtype="bfloat16")`.
  """
  if name not in _PRESETS:
    raise ValueError(f"Unknown OFA preset {name!r}; known: {', '.join(_PRESETS)}")
  fields = {f.name for f in dataclasses.fields(OFAConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown OFAConfig field(s) {unknown} in overrides of "
                     f"preset {name!r}")
  return OFAConfig(**{**_PRESETS[name], **overrides})
