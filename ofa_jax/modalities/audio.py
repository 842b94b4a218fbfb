"""AUDIO: waveform -> 80-dim log-mel fbank (Kaldi conventions) with a frame mask.

Why Kaldi's conventions: OFASys (like fairseq's speech recipes) feeds the model
torchaudio's Kaldi-compatible fbank of the 16-bit-scaled waveform, so a checkpoint
trained there expects exactly that feature. We compute the same math with
`tf.signal`, in graph mode, inside tf.data:

  frames of 25 ms every 10 ms (snip edges: 1 + (n - win) // hop frames), remove
  each frame's DC offset, pre-emphasis 0.97, Povey window (Hann ** 0.85), |FFT|^2
  over the next power of two, triangular mel filters on the 1127 ln(1 + f / 700)
  scale from 20 Hz to Nyquist, log with a floor of float32 epsilon.

Then utterance-level CMVN (mean and variance over the real frames), then pad or
trim to `max_frames`. No dither, so the features are deterministic.

Values: float32 waveform [n] (or [n, channels], averaged) at `sample_rate`, or a
scalar string of WAV bytes (`tf.audio.decode_wav`). An empty clip, a clip shorter
than one window or undecodable WAV bytes give valid=False (the plan drops and counts
the example). WAV bytes at another sample rate are a configuration error and raise.

Options (slot attribute, else task option, else default):
  sample_rate / audio_sample_rate        16000
  num_mel_bins / audio_num_mel_bins      80
  max_frames / audio_max_frames          3000 (30 s); target side: target_audio_max_frames
  preemphasis / audio_preemphasis        0.97 (0 disables it)
  input_scale / audio_input_scale        32768 (float waveform in [-1, 1] -> 16-bit
                                         range; integer PCM is not rescaled)
  cmvn / audio_cmvn                      True (utterance-level)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import numpy as np
import tensorflow as tf

from ofa_jax.modalities import image_ops
from ofa_jax.modalities import options
from ofa_jax.modalities.base import (DenseModality, DenseSlotOutput, SlotContext,
                                     single_slot_streams, dense_target_streams)
from ofa_jax.modalities.spec import BOTH_SIDES, AttrSpec, Stream

DEFAULT_SAMPLE_RATE = 16000
DEFAULT_NUM_MEL_BINS = 80
DEFAULT_MAX_FRAMES = 3000
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
LOW_FREQ_HZ = 20.0
POVEY_POWER = 0.85
LOG_FLOOR = float(np.finfo(np.float32).eps)
CMVN_VAR_FLOOR = 1e-10

AUDIO_STREAM = "audio"                 # float32 [Ta, 80] log-mel fbank (+ mask,
                                       # text offset [1], slot rank [1])
TARGET_AUDIO = "target_audio"          # float32 [Tta, 80] fbank frames (TTS)


class FbankConfig(NamedTuple):
  """Static fbank settings; all derived sizes are Python ints (static shapes)."""

  sample_rate: int = DEFAULT_SAMPLE_RATE
  num_mel_bins: int = DEFAULT_NUM_MEL_BINS
  preemphasis: float = 0.97
  input_scale: float = 32768.0

  @property
  def window_size(self) -> int:
    return int(self.sample_rate * FRAME_LENGTH_MS / 1000)

  @property
  def hop_size(self) -> int:
    return int(self.sample_rate * FRAME_SHIFT_MS / 1000)

  @property
  def fft_size(self) -> int:
    return 1 << int(math.ceil(math.log2(self.window_size)))


def num_frames(num_samples: int, cfg: FbankConfig = FbankConfig()) -> int:
  """How many fbank frames a waveform of `num_samples` gives (snip edges)."""
  if num_samples < cfg.window_size:
    return 0
  return 1 + (num_samples - cfg.window_size) // cfg.hop_size


def mel_filterbank(cfg: FbankConfig) -> np.ndarray:
  """float64 [fft_size // 2 + 1, num_mel_bins]: Kaldi's triangular mel filters.

  A static constant built on the host once per trace. The Nyquist row is zero, as
  in Kaldi, which only uses the first fft_size // 2 bins.
  """
  n_bins = cfg.fft_size // 2
  nyquist = cfg.sample_rate / 2.0

  def mel(f):
    return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)

  lo, hi = mel(LOW_FREQ_HZ), mel(nyquist)
  delta = (hi - lo) / (cfg.num_mel_bins + 1)
  left = lo + delta * np.arange(cfg.num_mel_bins)
  centre, right = left + delta, left + 2 * delta
  bin_mel = mel(np.arange(n_bins) * cfg.sample_rate / cfg.fft_size)[:, None]
  up = (bin_mel - left) / (centre - left)
  down = (right - bin_mel) / (right - centre)
  weights = np.maximum(0.0, np.minimum(up, down))
  weights = np.concatenate([weights, np.zeros((1, cfg.num_mel_bins))], axis=0)
  return weights


def log_mel_fbank(waveform: tf.Tensor, cfg: FbankConfig = FbankConfig(),
                  dtype: tf.DType = tf.float32) -> tf.Tensor:
  """float [n] waveform (already scaled) -> [T, num_mel_bins] log-mel in `dtype`.

  T = num_frames(n); a waveform shorter than one window gives T = 0. The frame
  arithmetic runs in float64: low-energy mel bins sit ~1e-6 below the loudest one,
  where float32 FFT rounding would already move the log by ~1e-4.
  """
  waveform = tf.cast(tf.reshape(waveform, [-1]), tf.float64)
  frames = tf.signal.frame(waveform, cfg.window_size, cfg.hop_size, pad_end=False)
  frames = frames - tf.reduce_mean(frames, axis=-1, keepdims=True)
  if cfg.preemphasis:
    previous = tf.concat([frames[:, :1], frames[:, :-1]], axis=-1)
    frames = frames - cfg.preemphasis * previous
  n = np.arange(cfg.window_size, dtype=np.float64)
  window = (0.5 - 0.5 * np.cos(2 * np.pi * n / (cfg.window_size - 1))) ** POVEY_POWER
  frames = frames * tf.constant(window, tf.float64)
  # Zero-pad explicitly: RFFT refuses to pad an empty batch of frames by itself.
  frames = tf.pad(frames, [[0, 0], [0, cfg.fft_size - cfg.window_size]])
  spectrum = tf.signal.rfft(frames, fft_length=[cfg.fft_size])
  power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
  energies = tf.linalg.matmul(power, tf.constant(mel_filterbank(cfg), tf.float64))
  return tf.cast(tf.math.log(tf.maximum(energies, LOG_FLOOR)), dtype)


def utterance_cmvn(feats: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Per-dimension mean / variance normalization over the frames where mask = 1."""
  weight = tf.cast(mask, feats.dtype)[:, None]
  count = tf.maximum(tf.reduce_sum(weight), 1.0)
  mean = tf.reduce_sum(feats * weight, axis=0) / count
  var = tf.reduce_sum(tf.square(feats - mean) * weight, axis=0) / count
  return (feats - mean) * tf.math.rsqrt(tf.maximum(var, CMVN_VAR_FLOOR)) * weight


class AudioProcessor(DenseModality):
  """The AUDIO modality (see the module docstring for the options).

  Data side only for now: no encoder adapter `audio` nor head `target_audio` is
  registered in the model registry, so AUDIO tasks register with data_only=True
  (inspection) and are refused for training.
  """

  name = "AUDIO"
  attributes = (
      AttrSpec("sample_rate", "int", BOTH_SIDES, doc="audio Hz"),
      AttrSpec("num_mel_bins", "int", BOTH_SIDES, doc="fbank bins"),
      AttrSpec("max_frames", "int", BOTH_SIDES, doc="longest fbank sequence"),
      AttrSpec("preemphasis", "ratio", BOTH_SIDES, doc="0 disables it"),
      AttrSpec("input_scale", "float", BOTH_SIDES,
               doc="float waveform -> 16-bit range"),
      AttrSpec("cmvn", "bool", BOTH_SIDES, doc="utterance-level CMVN"),
  )
  adapter = AUDIO_STREAM
  head = TARGET_AUDIO
  input_streams = single_slot_streams(AUDIO_STREAM, 2)
  target_streams = dense_target_streams(TARGET_AUDIO, 2)
  length_options = {AUDIO_STREAM: ("audio_max_frames",),
                    TARGET_AUDIO: ("target_audio_max_frames",)}

  def absent_dims(self, stream: Stream, options: Mapping[str, Any]
                  ) -> tuple[int, ...]:
    del stream
    return (int(options.get("audio_num_mel_bins", DEFAULT_NUM_MEL_BINS)),)

  def _config(self, ctx: SlotContext) -> FbankConfig:
    opt = lambda name, default, kind: options.slot_option(  # noqa: E731
        ctx, name, (f"audio_{name}",), default, kind)
    cfg = FbankConfig(
        sample_rate=int(image_ops.positive(
            ctx, "sample_rate", opt("sample_rate", DEFAULT_SAMPLE_RATE, int))),
        num_mel_bins=int(image_ops.positive(
            ctx, "num_mel_bins", opt("num_mel_bins", DEFAULT_NUM_MEL_BINS, int))),
        preemphasis=float(image_ops.positive(
            ctx, "preemphasis", opt("preemphasis", 0.97, float), allow_zero=True)),
        input_scale=float(image_ops.positive(
            ctx, "input_scale", opt("input_scale", 32768.0, float))))
    if cfg.window_size < 2:
      raise ValueError(f"{ctx.where()}: sample_rate {cfg.sample_rate} is too low "
                       f"for a {FRAME_LENGTH_MS} ms window")
    return cfg

  def _features(self, value: tf.Tensor, ctx: SlotContext, max_frames: int
                ) -> DenseSlotOutput:
    cfg = self._config(ctx)
    cmvn = options.slot_option(ctx, "cmvn", ("audio_cmvn",), True, bool)
    value = tf.convert_to_tensor(value)
    scale = cfg.input_scale
    if value.dtype == tf.string:
      if value.shape.rank not in (None, 0):
        raise ValueError(f"{ctx.where()}: encoded AUDIO must be a scalar string of "
                         f"WAV bytes, got shape {value.shape}")

      def decode(data):
        audio, rate = tf.audio.decode_wav(data)
        return tf.reduce_mean(audio, axis=-1), rate

      (waveform, rate), decoded = image_ops.guarded(
          decode, value, (tf.zeros([0], tf.float32), tf.constant(0, tf.int32)),
          shapes=(tf.TensorShape([None]), tf.TensorShape([])))
      check = tf.debugging.Assert(
          tf.logical_or(tf.logical_not(decoded), tf.equal(rate, cfg.sample_rate)),
          [tf.constant(f"{ctx.where()}: WAV sample rate differs from the expected "
                       f"{cfg.sample_rate} Hz (set the sample_rate option):"), rate])
      with tf.control_dependencies([check]):
        waveform = tf.identity(waveform)
    elif value.dtype.is_floating or value.dtype.is_integer:
      if value.shape.rank not in (1, 2):
        raise ValueError(f"{ctx.where()}: an AUDIO waveform must be [n] or "
                         f"[n, channels], got shape {value.shape}")
      waveform = tf.cast(value, tf.float32)
      if value.shape.rank == 2:
        waveform = tf.reduce_mean(waveform, axis=-1)
      decoded = tf.constant(True)
      if value.dtype.is_integer:
        scale = 1.0  # integer PCM is already in the 16-bit range Kaldi expects
    else:
      raise ValueError(f"{ctx.where()}: an AUDIO value must be a float waveform or "
                       f"WAV bytes, got {value.dtype.name}")

    waveform = waveform * scale
    # float64 until after CMVN: a low-variance mel bin divides float32 rounding
    # of the log energies by a small std.
    feats = log_mel_fbank(waveform, cfg, dtype=tf.float64)
    length = tf.shape(feats)[0]
    finite = tf.reduce_all(tf.math.is_finite(feats))
    valid = tf.logical_and(tf.logical_and(decoded, length > 0), finite)
    if cmvn:
      feats = utterance_cmvn(feats, tf.ones([length], tf.int32))
    feats = tf.cast(feats, tf.float32)
    feats = tf.where(valid, feats, tf.zeros_like(feats))
    keep = tf.minimum(length, max_frames)
    feats = tf.pad(feats[:keep], [[0, max_frames - keep], [0, 0]])
    feats = tf.ensure_shape(feats, [max_frames, cfg.num_mel_bins])
    mask = tf.cast(tf.logical_and(tf.range(max_frames) < keep, valid), tf.int32)
    return DenseSlotOutput(values=feats, mask=mask, valid=valid)

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    """Waveform or WAV bytes -> float32 [max_frames, 80], mask int32 [max_frames]."""
    max_frames = options.slot_option(ctx, "max_frames", ("audio_max_frames",),
                                       DEFAULT_MAX_FRAMES, int)
    return self._features(value, ctx,
                          int(image_ops.positive(ctx, "max_frames", max_frames)))

  def preprocess_target(self, value: tf.Tensor, ctx: SlotContext) -> DenseSlotOutput:
    """The same fbank frames as regression targets (TTS), with their mask."""
    max_frames = options.slot_option(
        ctx, "max_frames", ("target_audio_max_frames", "audio_max_frames"),
        DEFAULT_MAX_FRAMES, int)
    return self._features(value, ctx,
                          int(image_ops.positive(ctx, "max_frames", max_frames)))

  def postprocess(self, tokens: Any, ctx: Mapping[str, Any]) -> np.ndarray:
    """Generated fbank frames [T, 80] -> the real frames (ctx["mask"] if given)."""
    feats = np.asarray(tokens, np.float32)
    if feats.ndim != 2:
      raise ValueError(f"AUDIO postprocess expects frames [T, bins], got shape "
                       f"{feats.shape}")
    mask = ctx.get("mask") if ctx else None
    if mask is not None:
      feats = feats[np.asarray(mask).astype(bool)]
    return feats


AUDIO = AudioProcessor()
