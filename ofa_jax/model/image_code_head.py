"""The `target_image` head: a frozen VQGAN between target pixels and `<code_k>` ids.

Why a frozen head and not a trained one: OFA generates images as a sequence of
VQ codes that the decoder predicts with its ordinary cross entropy; the VQGAN
is a tokenizer trained beforehand (`python -m ofa_jax.train_vq`, or OFA's /
taming's converted with `tools/convert_vqgan_checkpoint.py`) and never updated
by the generalist. Its variables therefore live in the train state's
non-trained `model_state` (collection `target_heads`), are saved with every
checkpoint (a run directory can always turn its generated codes back into
pixels) and see no optimizer.

Two jobs, both jit-traceable:
  * `tokenize`: inside the train / eval step, the target images of the batch
    are encoded and their codes written over the placeholder `<code_0>` ids the
    plan put at the CODE positions of `decoder_target_tokens` (and, shifted, of
    `decoder_input_tokens`): OFASys's `update_sample`. Rows whose target-image
    mask is 0 (no image target, or codes already in an offline cache) are left
    as they are.
  * `detokenize`: generated `<code_k>` ids -> pixels in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ofa_jax import features
from ofa_jax.modalities import image_features

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _HeadGeometry:
  """The OFAConfig fields a head reads, when there is no generalist."""

  code_image_size: int
  code_downsample: int
  image_tokenizer: str


def vqgan_config(spec: str) -> Any:
  """The VQGANConfig an `OFAConfig.image_tokenizer` names (preset or JSON)."""
  from ofa_jax.model import vqgan  # pylint: disable=g-import-not-at-top
  spec = str(spec).strip()
  if spec.startswith("{"):
    try:
      fields = json.loads(spec)
    except json.JSONDecodeError as e:
      raise ValueError(f"image_tokenizer is not valid JSON: {e}") from None
    return vqgan.VQGANConfig.from_dict(fields)
  return vqgan.get_config(spec)


def code_fill(ids: Array, kinds: Array, rows: Array) -> tuple[Array, Array]:
  """(is_code [B, L], fill [B, L]): the k-th CODE position of a row whose mask
  is on takes the row's k-th code id (row-major grid order)."""
  is_code = (jnp.asarray(kinds) == int(features.TokenKind.CODE)) & (
      jnp.asarray(rows)[:, None] > 0)
  index = jnp.clip(jnp.cumsum(is_code, axis=-1) - 1, 0, ids.shape[1] - 1)
  return is_code, jnp.take_along_axis(ids, index, axis=-1).astype(jnp.int32)


class ImageCodeHead:
  """The frozen VQGAN of IMAGE targets (registered as `target_image`).

  Args:
    config: the `OFAConfig` (its `image_tokenizer`, `code_image_size`,
      `code_downsample`).
    checkpoint_dir: a VQGAN directory (`ofa_jax.model.vqgan.io`) with the
      trained weights; None when they come from the generalist's own checkpoint.
  """

  def __init__(self, config: Any, checkpoint_dir: Optional[str] = None, *,
               vq_config: Any = None):
    from ofa_jax.model import vqgan  # pylint: disable=g-import-not-at-top
    self.vq_config = vq_config or vqgan_config(config.image_tokenizer)
    factor = self.vq_config.downsample_factor
    if factor != config.code_downsample:
      raise ValueError(
          f"the image tokenizer {config.image_tokenizer!r} downsamples by "
          f"{factor}, but the model config has code_downsample="
          f"{config.code_downsample} (its decoder's code grid)")
    self.image_size = int(config.code_image_size)
    self.grid = self.vq_config.grid_side(self.image_size)
    self.module = vqgan.VQGAN(self.vq_config)
    self.checkpoint_dir = checkpoint_dir

  @classmethod
  def from_directory(cls, directory: str, image_size: int
                     ) -> tuple["ImageCodeHead", dict]:
    """(head, variables) of a VQGAN directory alone, for `image_size` px
    targets: the offline tokenizer needs no generalist."""
    from ofa_jax.model.vqgan import io as vq_io  # pylint: disable=g-import-not-at-top
    vq_config, variables = vq_io.load_vqgan(directory)
    shim = _HeadGeometry(code_image_size=int(image_size),
                         code_downsample=vq_config.downsample_factor,
                         image_tokenizer=f"VQGAN at {directory}")
    return cls(shim, directory, vq_config=vq_config), dict(variables)

  @property
  def num_codes(self) -> int:
    return int(self.vq_config.n_embed)

  def check_layout(self, layout: Any) -> None:
    """The VQGAN's codebook must be the vocabulary's `<code_k>` range."""
    if int(layout.num_codes) != self.num_codes:
      raise ValueError(
          f"the image tokenizer has {self.num_codes} codes but the vocabulary "
          f"has {layout.num_codes} <code_k> ids: build the vocabulary with "
          f"num_codes={self.num_codes}")

  # ---- variables -------------------------------------------------------------
  def init_variables(self, rng: Array) -> dict:
    """Zeros of the variables' structure: placeholders that `load_variables`
    (or a checkpoint) replaces; never trained, so never random."""
    del rng
    side = self.vq_config.downsample_factor
    pixels = jnp.zeros((1, side, side, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: self.module.init(
        jax.random.key(0), pixels, train=False))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        nn.meta.unbox(dict(shapes)))

  def load_variables(self) -> Optional[dict]:
    """The trained VQGAN of `checkpoint_dir` (None without one).

    Raises when the directory's architecture or codebook is not this head's.
    """
    if not self.checkpoint_dir:
      return None
    from ofa_jax.model.vqgan import io as vq_io  # pylint: disable=g-import-not-at-top
    config, variables = vq_io.load_vqgan(self.checkpoint_dir,
                                         expected_num_codes=self.num_codes)
    if config != self.vq_config:
      theirs, ours = config.to_dict(), self.vq_config.to_dict()
      diff = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
              if theirs.get(k) != ours.get(k)}
      raise ValueError(f"VQGAN at {self.checkpoint_dir}: its architecture differs "
                       f"from the model config's image_tokenizer in "
                       f"{ {k: f'{a!r} vs {b!r}' for k, (a, b) in diff.items()} }")
    return dict(variables)

  # ---- the two jobs ------------------------------------------------------------
  def encode(self, variables: Mapping[str, Any], pixels: Array) -> Array:
    """Pixels [B, S, S, 3] in [-1, 1] -> code indices int32 [B, grid * grid]."""
    codes = self.module.apply(variables, pixels, method=self.module.encode_codes)
    return jax.lax.stop_gradient(codes.reshape(codes.shape[0], -1))

  def decode(self, variables: Mapping[str, Any], codes: Array) -> Array:
    """Code indices [B, grid * grid] -> pixels [B, S, S, 3] in about [-1, 1]."""
    b = codes.shape[0]
    codes = jnp.clip(codes, 0, self.num_codes - 1).reshape(b, self.grid,
                                                           self.grid)
    return self.module.apply(variables, codes, method=self.module.decode_codes)

  def tokenize(self, variables: Mapping[str, Any], batch: Mapping[str, Any],
               code_offset: int) -> dict:
    """`batch` with the codes of its target images at the CODE positions."""
    batch = dict(batch)
    pixels = batch.get(image_features.TARGET_IMAGE)
    kinds = batch.get(features.DECODER_TARGET_KINDS)
    if pixels is None or kinds is None or pixels.ndim != 4 or not pixels.shape[1]:
      return batch
    b = pixels.shape[0]
    if pixels.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"target images of {pixels.shape[1:3]} px, but the VQGAN "
                       f"head encodes {self.image_size} px (code_image_size)")
    rows = jnp.asarray(batch[image_features.TARGET_IMAGE_MASK]).reshape(b, -1)[:, 0]
    pixels = jnp.asarray(pixels, jnp.float32)
    # A batch with no image to encode (other tasks only, or codes already in an
    # offline cache) skips the encoder at run time.
    ids = jax.lax.cond(
        jnp.any(rows > 0),
        lambda: self.encode(variables, pixels) + code_offset,
        lambda: jnp.full((b, self.grid * self.grid), code_offset, jnp.int32))
    is_code, fill = code_fill(ids, kinds, rows)
    targets = jnp.asarray(batch[features.DECODER_TARGET_TOKENS])
    batch[features.DECODER_TARGET_TOKENS] = jnp.where(is_code, fill, targets)
    dec_in = jnp.asarray(batch[features.DECODER_INPUT_TOKENS])
    batch[features.DECODER_INPUT_TOKENS] = dec_in.at[:, 1:].set(
        jnp.where(is_code[:, :-1], fill[:, :-1], dec_in[:, 1:]))
    return batch

  # The task features `tokenize_task_features` reads and writes.
  TASK_FEATURES = (features.TARGETS, features.TARGET_KINDS,
                   features.TARGET_INPUTS, image_features.TARGET_IMAGE,
                   image_features.TARGET_IMAGE_MASK)

  def tokenize_task_features(self, variables: Mapping[str, Any],
                             examples: Mapping[str, Any], code_offset: int
                             ) -> dict:
    """The offline cache's version of `tokenize`, on task features.

    `examples` is a batch of task features of one length (`targets`,
    `target_kinds`, `target_inputs` [B, L] and the target-image streams); the
    codes go to the CODE positions of `targets` and `target_inputs` (which the
    feature converter shifts into the decoder inputs), the pixels are dropped
    (an empty stream) and the mask set to 0, so the train step has nothing
    left to encode.
    """
    out = dict(examples)
    pixels = jnp.asarray(examples[image_features.TARGET_IMAGE], jnp.float32)
    rows = jnp.asarray(examples[image_features.TARGET_IMAGE_MASK]).reshape(
        pixels.shape[0], -1)[:, 0]
    ids = self.encode(variables, pixels) + code_offset
    is_code, fill = code_fill(ids, examples[features.TARGET_KINDS], rows)
    for key in (features.TARGETS, features.TARGET_INPUTS):
      out[key] = jnp.where(is_code, fill, jnp.asarray(examples[key]))
    out[image_features.TARGET_IMAGE] = jnp.zeros(
        (pixels.shape[0], 0) + pixels.shape[2:], jnp.float32)
    out[image_features.TARGET_IMAGE_MASK] = jnp.zeros_like(
        jnp.asarray(examples[image_features.TARGET_IMAGE_MASK]))
    return out

  def detokenize(self, variables: Mapping[str, Any], ids: Array,
                 code_offset: int) -> Array:
    """Generated `<code_k>` ids [B, grid * grid] -> pixels [B, S, S, 3]."""
    return self.decode(variables, jnp.asarray(ids, jnp.int32) - code_offset)

  def describe(self) -> dict[str, Any]:
    """What a run directory records about the head."""
    return {"vqgan": dataclasses.asdict(self.vq_config)
            if dataclasses.is_dataclass(self.vq_config) else str(self.vq_config),
            "image_size": self.image_size, "grid": self.grid,
            "checkpoint_dir": self.checkpoint_dir}
