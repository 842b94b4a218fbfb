"""Task features -> model features with static shapes (SeqIO `FeatureConverter`).

Why a custom converter: seqio's `EncDecFeatureConverter` pads with 0 and knows only
`inputs`/`targets`. OFA pads with 1 (`<pad>`), trains only the target tokens whose
`target_loss_mask` is 1 (forced decoder prompts and plain target text carry no
loss), restricts each target token to an id range (`target_kinds`), and carries
dense streams (pixels, fbank, frames) next to the tokens. Every stream leaves this
converter with a static shape, so one jitted step serves the whole mixture.

Length keys (`features.LENGTH_KEYS`): `inputs`/`targets` are token lengths; the
dense keys count images / frames (their leading axis); `target_image` is the side
of the square target image (0 = the mixture has none). A mixture without audio
sets `"audio": 0` and its batches carry `[B, 0, 80]` audio at no cost.

Packing (`pack=True`) concatenates several token-only examples into one row, as
seqio does, and is refused when any dense length is non-zero: a dense stream
cannot be split between packed examples.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from ofa_jax import features as F

_Spec = seqio.FeatureConverter.FeatureSpec

# Dense stream -> (rank, length key of its leading axis). The per-example trailing
# dims (image side, fbank bins, motion dims) come from the task dataset's spec.
_DENSE_RANKS: Mapping[str, int] = {
    F.IMAGES: 4, F.AUDIO: 2, F.VIDEO: 4, F.MOTION: 2,
    F.TARGET_IMAGE: 3, F.TARGET_AUDIO: 2, F.TARGET_MOTION: 2,
}

# Companion features: name -> (dtype, rank, the length key of axis 0 or an int).
_COMPANIONS: Mapping[str, tuple[tf.DType, int, str | int]] = {
    F.IMAGE_MASK: (tf.int32, 1, F.IMAGES),
    F.IMAGE_TEXT_OFFSET: (tf.int32, 1, F.IMAGES),
    F.IMAGE_SLOT_RANK: (tf.int32, 1, F.IMAGES),
    F.IMAGE_GEOMETRY: (tf.float32, 2, F.IMAGES),
    F.AUDIO_MASK: (tf.int32, 1, F.AUDIO),
    F.AUDIO_TEXT_OFFSET: (tf.int32, 1, 1),
    F.AUDIO_SLOT_RANK: (tf.int32, 1, 1),
    F.VIDEO_MASK: (tf.int32, 1, F.VIDEO),
    F.VIDEO_TEXT_OFFSET: (tf.int32, 1, 1),
    F.VIDEO_SLOT_RANK: (tf.int32, 1, 1),
    F.MOTION_MASK: (tf.int32, 1, F.MOTION),
    F.MOTION_TEXT_OFFSET: (tf.int32, 1, 1),
    F.MOTION_SLOT_RANK: (tf.int32, 1, 1),
    F.TARGET_IMAGE_MASK: (tf.int32, 1, 1),
    F.TARGET_AUDIO_MASK: (tf.int32, 1, F.TARGET_AUDIO),
    F.TARGET_MOTION_MASK: (tf.int32, 1, F.TARGET_MOTION),
}

_TOKEN_MODEL_FEATURES = {
    F.ENCODER_INPUT_TOKENS: _Spec(dtype=tf.int32),
    F.DECODER_TARGET_TOKENS: _Spec(dtype=tf.int32),
    F.DECODER_INPUT_TOKENS: _Spec(dtype=tf.int32),
    F.DECODER_LOSS_WEIGHTS: _Spec(dtype=tf.float32),
    F.DECODER_TARGET_KINDS: _Spec(dtype=tf.int32),
    F.DECODER_PROMPT_MASK: _Spec(dtype=tf.int32),
}

# Per-token int32 feature that carries the float sample weight through seqio's
# int32-only packing (bit-exact via bitcast).
_WEIGHT_BITS = "_target_weight_bits"
_PROMPT = "_target_prompt_mask"  # prompt_mask(), carried through packing


def prompt_mask(targets: tf.Tensor, loss_mask: tf.Tensor,
                eos_id: int = F.EOS_ID) -> tf.Tensor:
  """int32 [Lo]: 1 on the leading untrained target tokens (the forced prompt).

  Read from the loss mask *before* the sample weight is folded in, so that an
  example of weight 0 keeps its true prompt. The final `</s>` is never prompt
  (a dense-target task's token stream is a lone untrained `</s>`).
  """
  free = tf.logical_or(tf.not_equal(loss_mask, 0), tf.equal(targets, eos_id))
  return tf.cast(tf.equal(tf.cumsum(tf.cast(free, tf.int32)), 0), tf.int32)


def _decoder_inputs_source(ex) -> tf.Tensor:
  """What gets shifted into the decoder inputs: `target_inputs` (noised in
  training when a target slot says so) or, for older datasets, `targets`."""
  return ex[F.TARGET_INPUTS] if F.TARGET_INPUTS in ex else ex[F.TARGETS]


def _pad_axis0(x: tf.Tensor, length: int, value) -> tf.Tensor:
  """Pads (never trims: the length check already ran) axis 0 to `length`."""
  pad = length - tf.shape(x)[0]
  paddings = [[0, pad]] + [[0, 0]] * (x.shape.rank - 1)
  return tf.pad(x, paddings, constant_values=value)


class OFAFeatureConverter(seqio.FeatureConverter):
  """Pads / packs OFA task features into static-shape model features.

  Model features (B = batch, after `seqio.get_dataset(batch_size=...)`):
    encoder_input_tokens [B, Li] (pad 1), decoder_target_tokens [B, Lo] (pad 1),
    decoder_input_tokens [B, Lo] (`target_inputs`, else targets, shifted right,
    <s>=0 first), decoder_loss_weights float32 [B, Lo] (target_loss_mask x
    sample_weight, 0 on pad), decoder_target_kinds [B, Lo] (TokenKind, PAD=0 on
    pad), decoder_prompt_mask [B, Lo] (see `prompt_mask`), task_id [B],
    and every dense stream and companion of `features.DENSE_STREAMS` under its
    task-feature name with a leading batch axis.
  With `pack=True` only the token features plus `{encoder,decoder}_{segment_ids,
  positions}` are emitted (the sample weight is still folded into the loss weights).
  """

  TASK_FEATURES = {
      F.INPUTS: _Spec(dtype=tf.int32),
      F.TARGETS: _Spec(dtype=tf.int32),
      **{k: _Spec(dtype=tf.float32, rank=r) for k, r in _DENSE_RANKS.items()},
  }
  PACKING_FEATURE_DTYPES = {
      F.ENCODER_SEGMENT_IDS: tf.int32,
      F.DECODER_SEGMENT_IDS: tf.int32,
      F.ENCODER_POSITIONS: tf.int32,
      F.DECODER_POSITIONS: tf.int32,
  }

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = F.BOS_ID,
               pad_id: int = F.PAD_ID) -> None:
    # seqio reads MODEL_FEATURES from the instance; packing drops the dense
    # streams (they cannot be split across packed rows), so it is per instance.
    if pack:
      self.MODEL_FEATURES = dict(_TOKEN_MODEL_FEATURES)
    else:
      self.MODEL_FEATURES = {
          **_TOKEN_MODEL_FEATURES,
          F.TASK_ID: _Spec(dtype=tf.int32, rank=0),
          **{k: _Spec(dtype=tf.float32, rank=r) for k, r in _DENSE_RANKS.items()},
          **{k: _Spec(dtype=d, rank=r) for k, (d, r, _) in _COMPANIONS.items()},
      }
    super().__init__(pack=pack, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id)
    self._pad_id = pad_id

  # -------------------------------------------------------------------------
  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    """Length of axis 1 (after the batch axis) of every model feature.

    Rank-0 features (`task_id`) are listed with length 0 as seqio requires every
    model feature to be named; their batched shape is [B].
    """
    li = task_feature_lengths[F.INPUTS]
    lo = task_feature_lengths[F.TARGETS]
    lengths = {F.ENCODER_INPUT_TOKENS: li, F.DECODER_TARGET_TOKENS: lo,
               F.DECODER_INPUT_TOKENS: lo, F.DECODER_LOSS_WEIGHTS: lo,
               F.DECODER_TARGET_KINDS: lo, F.DECODER_PROMPT_MASK: lo}
    if self.pack:
      lengths.update({F.ENCODER_SEGMENT_IDS: li, F.ENCODER_POSITIONS: li,
                      F.DECODER_SEGMENT_IDS: lo, F.DECODER_POSITIONS: lo})
      return lengths
    lengths[F.TASK_ID] = 0
    for k in _DENSE_RANKS:
      lengths[k] = task_feature_lengths[k]
    for k, (_, _, n) in _COMPANIONS.items():
      lengths[k] = n if isinstance(n, int) else task_feature_lengths[n]
    return lengths

  # -------------------------------------------------------------------------
  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    missing = [k for k in (F.TARGET_LOSS_MASK, F.TARGET_KINDS, F.SAMPLE_WEIGHT,
                           F.TASK_ID) if k not in ds.element_spec]
    if missing:
      raise ValueError(
          f"OFAFeatureConverter: the task dataset lacks {missing}; it must carry "
          "the full feature layout of ofa_jax/features.py (use plan.register_task)."
      )
    if self.pack:
      return self._pack_tokens(ds, task_feature_lengths)
    return self._pad_all(ds, task_feature_lengths)

  def _pad_all(self, ds: tf.data.Dataset, lengths: Mapping[str, int]
           ) -> tf.data.Dataset:
    spec = ds.element_spec
    missing = [k for k in _COMPANIONS if k not in spec]
    if missing:
      raise ValueError(f"OFAFeatureConverter: the task dataset lacks the dense "
                       f"companion features {missing}.")
    # Static trailing dims of every dense stream, read from the task dataset.
    trailing = {}
    for k in _DENSE_RANKS:
      dims = spec[k].shape[1:]
      if k == F.TARGET_IMAGE:
        dims = tf.TensorShape([lengths[k], 3])
      if not dims.is_fully_defined():
        raise ValueError(
            f"OFAFeatureConverter: dense feature {k!r} has shape {spec[k].shape}; "
            "all but its leading axis must be static (set by the task's modality "
            "options, e.g. image_size).")
      trailing[k] = dims.as_list()
    pad_id, bos_id = self._pad_id, self.bos_id

    def convert(ex):
      li, lo = lengths[F.INPUTS], lengths[F.TARGETS]
      targets = _pad_axis0(ex[F.TARGETS], lo, pad_id)
      loss_mask = _pad_axis0(ex[F.TARGET_LOSS_MASK], lo, 0)
      weights = (tf.cast(loss_mask, tf.float32)
                 * tf.cast(ex[F.SAMPLE_WEIGHT], tf.float32))
      dec_src = _pad_axis0(_decoder_inputs_source(ex), lo, pad_id)
      out = {
          F.ENCODER_INPUT_TOKENS: _pad_axis0(ex[F.INPUTS], li, pad_id),
          F.DECODER_TARGET_TOKENS: targets,
          F.DECODER_INPUT_TOKENS: tf.concat(
              [tf.constant([bos_id], tf.int32), dec_src[:-1]], 0),
          F.DECODER_LOSS_WEIGHTS: weights,
          F.DECODER_TARGET_KINDS: _pad_axis0(ex[F.TARGET_KINDS], lo, 0),
          F.DECODER_PROMPT_MASK: _pad_axis0(
              prompt_mask(ex[F.TARGETS], ex[F.TARGET_LOSS_MASK]), lo, 0),
          F.TASK_ID: tf.cast(ex[F.TASK_ID], tf.int32),
      }
      for k in _DENSE_RANKS:
        x = ex[k]
        if k == F.TARGET_IMAGE:
          side = lengths[k]
          x = tf.pad(x, [[0, side - tf.shape(x)[0]], [0, side - tf.shape(x)[1]],
                         [0, 0]])
        else:
          x = _pad_axis0(x, lengths[k], 0.0)
        x.set_shape([lengths[k]] + trailing[k])
        out[k] = x
      for k, (_, rank, n) in _COMPANIONS.items():
        n = n if isinstance(n, int) else lengths[n]
        x = ex[k][:n]  # [1]-shaped companions of absent streams stay [1]
        x = _pad_axis0(x, n, 0)
        x.set_shape([n] + spec[k].shape[1:].as_list())
        out[k] = x
      for k in _TOKEN_MODEL_FEATURES:
        out[k].set_shape([lengths[F.INPUTS] if k == F.ENCODER_INPUT_TOKENS
                          else lengths[F.TARGETS]])
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def _pack_tokens(self, ds: tf.data.Dataset, lengths: Mapping[str, int]
            ) -> tf.data.Dataset:
    dense = {k: lengths[k] for k in _DENSE_RANKS if lengths.get(k, 0)}
    if dense:
      raise ValueError(
          f"OFAFeatureConverter(pack=True) packs token sequences only, but "
          f"task_feature_lengths has non-zero dense lengths {dense}. Set them to "
          "0 (a token-only mixture) or use pack=False.")
    li, lo = lengths[F.INPUTS], lengths[F.TARGETS]

    # seqio's packer measures each example by its non-zero entries, but <s> is
    # id 0 and loss masks hold zeros: every value travels shifted by +1.
    def to_packable(ex):
      n = tf.shape(ex[F.TARGETS])[0]
      weight = tf.cast(ex[F.SAMPLE_WEIGHT], tf.float32)
      return {
          F.INPUTS: ex[F.INPUTS] + 1, F.TARGETS: ex[F.TARGETS] + 1,
          F.TARGET_LOSS_MASK: ex[F.TARGET_LOSS_MASK] + 1,
          F.TARGET_KINDS: ex[F.TARGET_KINDS] + 1,
          F.TARGET_INPUTS: _decoder_inputs_source(ex) + 1,
          _PROMPT: prompt_mask(ex[F.TARGETS], ex[F.TARGET_LOSS_MASK]) + 1,
          _WEIGHT_BITS: tf.bitcast(tf.fill([n], weight), tf.int32) + 1,
      }

    packed_lengths = {F.INPUTS: li, F.TARGETS: lo, F.TARGET_LOSS_MASK: lo,
                      F.TARGET_KINDS: lo, F.TARGET_INPUTS: lo, _PROMPT: lo,
                      _WEIGHT_BITS: lo}
    ds = ds.map(to_packable, num_parallel_calls=tf.data.AUTOTUNE)
    ds = seqio.utils.trim_and_pack_dataset(ds, packed_lengths,
                                           self._use_custom_packing_ops)
    pad_id, bos_id = self._pad_id, self.bos_id

    def convert(ex):
      enc_seg = ex[F.INPUTS + "_segment_ids"]
      dec_seg = ex[F.TARGETS + "_segment_ids"]
      # seqio pads with 0; OFA's pad is 1 (0 is <s>).
      inputs = tf.where(enc_seg > 0, ex[F.INPUTS] - 1, pad_id)
      targets = tf.where(dec_seg > 0, ex[F.TARGETS] - 1, pad_id)
      dec_src = tf.where(dec_seg > 0, ex[F.TARGET_INPUTS] - 1, pad_id)
      dec_in = seqio.utils.make_autoregressive_inputs(
          dec_src, sequence_id=dec_seg, bos_id=bos_id)
      dec_in = tf.where(dec_seg > 0, dec_in, pad_id)
      weight = tf.bitcast(ex[_WEIGHT_BITS] - 1, tf.float32)
      loss = tf.cast(ex[F.TARGET_LOSS_MASK] - 1, tf.float32) * weight
      return {
          F.ENCODER_INPUT_TOKENS: inputs,
          F.DECODER_TARGET_TOKENS: targets,
          F.DECODER_INPUT_TOKENS: dec_in,
          F.DECODER_LOSS_WEIGHTS: tf.where(dec_seg > 0, loss, 0.0),
          F.DECODER_TARGET_KINDS: tf.where(dec_seg > 0, ex[F.TARGET_KINDS] - 1,
                                           0),
          F.DECODER_PROMPT_MASK: tf.where(dec_seg > 0, ex[_PROMPT] - 1, 0),
          F.ENCODER_SEGMENT_IDS: enc_seg,
          F.ENCODER_POSITIONS: ex[F.INPUTS + "_positions"],
          F.DECODER_SEGMENT_IDS: dec_seg,
          F.DECODER_POSITIONS: ex[F.TARGETS + "_positions"],
      }

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def for_model(model, caller: str) -> seqio.FeatureConverter:
  """The unpacked converter a t5x-style model names in `FEATURE_CONVERTER_CLS`."""
  cls = getattr(model, "FEATURE_CONVERTER_CLS", None)
  if cls is None:
    raise ValueError(f"{caller}: pass feature_converter= or give the model a "
                     "FEATURE_CONVERTER_CLS")
  return cls(pack=False)
