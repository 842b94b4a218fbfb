"""Task features -> model features with static shapes (SeqIO `FeatureConverter`).

Why a custom converter: seqio's `EncDecFeatureConverter` pads with 0 and knows only
`inputs`/`targets`. OFA pads with 1 (`<pad>`), trains only the target tokens whose
`target_loss_mask` is 1 (forced decoder prompts and plain target text carry no
loss), restricts each target token to an id range (`target_kinds`), and carries
dense streams (pixels, fbank, frames) next to the tokens. Every stream leaves this
converter with a static shape, so one jitted step serves the whole mixture.

Length keys (`modalities.length_keys()`): `inputs`/`targets` are token lengths;
each dense modality's primary streams (declared by its object, `spec.Stream`)
are padded along their leading axes to their own key (a count of images or
frames, or the side of a square target image). A key missing from the lengths
means the stream is absent: its batches carry a zero-length axis at no cost, so
a mixture names only the streams it uses.

Packing (`pack=True`) concatenates several token-only examples into one row, as
seqio does, and is refused when any dense length is non-zero: a dense stream
cannot be split between packed examples.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from ofa_jax import features as F
from ofa_jax import modalities

_Spec = seqio.FeatureConverter.FeatureSpec


def _dtype(stream) -> tf.DType:
  return tf.float32 if stream.is_float else tf.int32


def _primary(stream) -> bool:
  """A stream padded to a length key of its own (not a companion)."""
  return stream.length == stream.name


def _length(stream, lengths: Mapping[str, int]) -> int:
  """The padded size of a stream's leading axes (0 when its key is missing)."""
  if isinstance(stream.length, int):
    return stream.length
  return int(lengths.get(stream.length, 0))

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


def _pad_leading(x: tf.Tensor, axes: int, length: int) -> tf.Tensor:
  """Pads (never trims) the first `axes` axes of x to `length` with zeros."""
  shape = tf.shape(x)
  paddings = ([[0, length - shape[i]] for i in range(axes)]
              + [[0, 0]] * (x.shape.rank - axes))
  return tf.pad(x, paddings)


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
    and every stream of every registered dense modality
    (`ofa_jax.modalities.streams()`) under its task-feature name with a leading
    batch axis.
  With `pack=True` only the token features plus `{encoder,decoder}_{segment_ids,
  positions}` are emitted (the sample weight is still folded into the loss weights).
  """

  TASK_FEATURES = {
      F.INPUTS: _Spec(dtype=tf.int32),
      F.TARGETS: _Spec(dtype=tf.int32),
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
    # The dense streams are those of the modalities registered now.
    self._streams = modalities.streams()
    self.TASK_FEATURES = {
        **type(self).TASK_FEATURES,
        **{s.name: _Spec(dtype=_dtype(s), rank=s.rank)
           for s in self._streams if _primary(s)},
    }
    if pack:
      self.MODEL_FEATURES = dict(_TOKEN_MODEL_FEATURES)
    else:
      self.MODEL_FEATURES = {
          **_TOKEN_MODEL_FEATURES,
          F.TASK_ID: _Spec(dtype=tf.int32, rank=0),
          **{s.name: _Spec(dtype=_dtype(s), rank=s.rank) for s in self._streams},
      }
    super().__init__(pack=pack, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id)
    self._pad_id = pad_id

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """seqio's conversion, with the streams the lengths do not name absent.

    seqio requires a length for every task feature; a mixture names only the
    streams it uses, so the others get length 0 here (an unknown key still
    fails seqio's check).
    """
    return super().__call__(ds, self.complete_lengths(task_feature_lengths))

  def complete_lengths(self, task_feature_lengths: Mapping[str, int]
                       ) -> dict[str, int]:
    """The lengths with every unnamed dense stream at 0 (absent)."""
    return {**{s.name: 0 for s in self._streams if _primary(s)},
            **task_feature_lengths}

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
    for s in self._streams:
      lengths[s.name] = _length(s, task_feature_lengths)
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
    missing = [s.name for s in self._streams if s.name not in spec]
    if missing:
      raise ValueError(f"OFAFeatureConverter: the task dataset lacks the dense "
                       f"stream features {missing} (registered modalities: "
                       f"{list(modalities.names())}).")
    # Static shape of every dense stream after padding: its padded leading axes,
    # then the trailing dims read from the task dataset.
    shapes = {}
    for s in self._streams:
      n = _length(s, lengths)
      dims = spec[s.name].shape[s.padded_axes:]
      if not dims.is_fully_defined():
        raise ValueError(
            f"OFAFeatureConverter: dense feature {s.name!r} has shape "
            f"{spec[s.name].shape}; all but its leading axes must be static (set "
            "by the task's modality options, e.g. image_size).")
      shapes[s.name] = [n] * s.padded_axes + dims.as_list()
    pad_id, bos_id = self._pad_id, self.bos_id
    streams = self._streams

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
      for s in streams:
        n = _length(s, lengths)
        x = ex[s.name]
        if not _primary(s):
          x = x[:n]  # [1]-shaped companions of absent streams stay [1]
        x = _pad_leading(x, s.padded_axes, n)
        x.set_shape(shapes[s.name])
        out[s.name] = x
      for k in _TOKEN_MODEL_FEATURES:
        out[k].set_shape([lengths[F.INPUTS] if k == F.ENCODER_INPUT_TOKENS
                          else lengths[F.TARGETS]])
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def _pack_tokens(self, ds: tf.data.Dataset, lengths: Mapping[str, int]
            ) -> tf.data.Dataset:
    dense = {s.name: lengths[s.name] for s in self._streams
             if _primary(s) and lengths.get(s.name, 0)}
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
