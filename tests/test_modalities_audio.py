"""AUDIO preprocessing: Kaldi-style fbank against a NumPy reference, CMVN, validity."""

from __future__ import annotations

import io
import math
import wave

import numpy as np
import pytest
import tensorflow as tf

from ofa_jax.modalities import audio as audio_lib
from ofa_jax.modalities import get_processor
from tests.tf_testing import (eager_and_in_tf_data, same_eager_and_in_tf_data,
                              slot_context)

PROC = get_processor("AUDIO")
SR = 16000


def make_ctx(attrs=None, options=None):
  return slot_context("t_audio", "wav", attrs=attrs, options=options)


def waveform(n: int, seed: int = 0) -> np.ndarray:
  rng = np.random.RandomState(seed)
  t = np.arange(n) / SR
  w = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)
  return (w + 0.05 * rng.randn(n)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SR, channels: int = 1) -> bytes:
  buf = io.BytesIO()
  with wave.open(buf, "wb") as f:
    f.setnchannels(channels)
    f.setsampwidth(2)
    f.setframerate(rate)
    f.writeframes(samples.astype("<i2").tobytes())
  return buf.getvalue()


# ---------------------------------------------------------------------------
# An independent float64 reference of Kaldi's fbank (written from the Kaldi
# documentation: snip edges, DC removal, pre-emphasis, Povey window, power
# spectrum, mel triangles on 1127 ln(1 + f/700), log floor = float32 eps).
# ---------------------------------------------------------------------------
def reference_fbank(x: np.ndarray, sr=SR, bins=80, preemph=0.97) -> np.ndarray:
  x = np.asarray(x, np.float64)
  win, hop = int(0.025 * sr), int(0.010 * sr)
  nfft = 1
  while nfft < win:
    nfft *= 2
  count = 1 + (len(x) - win) // hop if len(x) >= win else 0
  mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
  lo, hi = mel(20.0), mel(sr / 2)
  delta = (hi - lo) / (bins + 1)
  banks = np.zeros((bins, nfft // 2))
  for m in range(bins):
    left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
    for k in range(nfft // 2):
      f = mel(k * sr / nfft)
      if left < f < right:
        banks[m, k] = ((f - left) / (centre - left) if f <= centre
                       else (right - f) / (right - centre))
  window = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * i / (win - 1))) ** 0.85
                     for i in range(win)])
  out = np.zeros((count, bins))
  for t in range(count):
    frame = x[t * hop:t * hop + win].copy()
    frame -= frame.mean()
    if preemph:
      for i in range(win - 1, 0, -1):
        frame[i] -= preemph * frame[i - 1]
      frame[0] -= preemph * frame[0]
    frame *= window
    spec = np.fft.rfft(frame, nfft)
    power = (spec.real ** 2 + spec.imag ** 2)[: nfft // 2]
    out[t] = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
  return out


def reference_cmvn(feats: np.ndarray) -> np.ndarray:
  mean = feats.mean(0)
  var = np.maximum((feats ** 2).mean(0) - mean ** 2, 1e-10)
  return (feats - mean) / np.sqrt(var)


def test_log_mel_matches_numpy_reference():
  x = waveform(4000) * 32768.0
  got = audio_lib.log_mel_fbank(tf.constant(x)).numpy()
  want = reference_fbank(x)
  assert got.shape == want.shape == (1 + (4000 - 400) // 160, 80)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_log_mel_without_preemphasis_and_other_rate():
  x = waveform(3000, seed=1) * 32768.0
  cfg = audio_lib.FbankConfig(sample_rate=8000, num_mel_bins=40, preemphasis=0.0)
  got = audio_lib.log_mel_fbank(tf.constant(x), cfg).numpy()
  want = reference_fbank(x, sr=8000, bins=40, preemph=0.0)
  assert got.shape == want.shape == (1 + (3000 - 200) // 80, 40)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_processor_output_is_reference_with_cmvn_eager_and_in_tf_data():
  x = waveform(5000, seed=2)
  ctx = make_ctx(attrs={"max_frames": 40})
  eager = same_eager_and_in_tf_data(lambda v: PROC.preprocess_input(v, ctx), x)
  frames = 1 + (5000 - 400) // 160
  assert eager.valid
  assert eager.values.shape == (40, 80) and eager.mask.shape == (40,)
  assert eager.mask.tolist() == [1] * frames + [0] * (40 - frames)
  want = reference_cmvn(reference_fbank(x.astype(np.float64) * 32768.0))
  np.testing.assert_allclose(eager.values[:frames], want, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(eager.values[frames:], 0.0)


@pytest.mark.parametrize("n", [399, 400, 401, 559, 560, 1234])
def test_frame_count_formula(n):
  ctx = make_ctx(attrs={"max_frames": 16})
  out = PROC.preprocess_input(tf.constant(waveform(n)), ctx)
  expected = 1 + (n - 400) // 160 if n >= 400 else 0
  assert audio_lib.num_frames(n) == expected
  assert int(out.mask.numpy().sum()) == min(expected, 16)
  assert bool(out.valid) == (expected > 0)


def test_long_clip_is_trimmed_to_max_frames():
  ctx = make_ctx(options={"audio_max_frames": 10})
  out = PROC.preprocess_input(tf.constant(waveform(8000)), ctx)
  assert out.values.shape == (10, 80) and out.mask.numpy().tolist() == [1] * 10
  full = reference_cmvn(reference_fbank(waveform(8000).astype(np.float64) * 32768.0))
  np.testing.assert_allclose(out.values.numpy(), full[:10], atol=1e-4, rtol=0)


def test_wav_bytes_int16_and_float_agree():
  pcm = np.round(waveform(4800, seed=3) * 20000).astype(np.int16)
  ctx = make_ctx(attrs={"max_frames": 32})
  from_wav, from_wav_ds = eager_and_in_tf_data(lambda v: PROC.preprocess_input(v, ctx),
                                               wav_bytes(pcm))
  from_float = PROC.preprocess_input(tf.constant(pcm / 32768.0, tf.float32), ctx)
  from_int = PROC.preprocess_input(tf.constant(pcm), ctx)
  np.testing.assert_array_equal(from_wav.values, from_wav_ds.values)
  assert from_wav.valid and bool(from_float.valid) and bool(from_int.valid)
  np.testing.assert_allclose(from_wav.values, from_float.values.numpy(), atol=1e-4)
  np.testing.assert_allclose(from_wav.values, from_int.values.numpy(), atol=1e-4)
  # Stereo is averaged to mono.
  stereo = np.stack([pcm, pcm], axis=1).reshape(-1)
  out = PROC.preprocess_input(tf.constant(wav_bytes(stereo, channels=2)), ctx)
  np.testing.assert_allclose(out.values.numpy(), from_wav.values, atol=1e-4)


def test_empty_and_undecodable_audio_is_invalid_in_a_running_dataset():
  ctx = make_ctx(attrs={"max_frames": 8})
  good = wav_bytes(np.round(waveform(2000) * 20000).astype(np.int16))
  values = [good, b"", b"RIFF\x00\x00", np.random.RandomState(0).bytes(200),
            good[:60], wav_bytes(np.zeros(100, np.int16)), good]
  ds = tf.data.Dataset.from_tensor_slices(values).map(
      lambda v: PROC.preprocess_input(v, ctx))
  got = [(bool(o.valid), int(o.mask.sum())) for o in ds.as_numpy_iterator()]
  assert got[0] == got[-1] == (True, 8)
  assert got[1:-1] == [(False, 0)] * 5
  empty = PROC.preprocess_input(tf.zeros([0], tf.float32), ctx)
  assert not bool(empty.valid) and int(empty.mask.numpy().sum()) == 0


def test_wrong_sample_rate_is_a_clear_error():
  data = wav_bytes(np.zeros(4000, np.int16), rate=8000)
  with pytest.raises(tf.errors.InvalidArgumentError, match="sample rate.*16000"):
    PROC.preprocess_input(tf.constant(data), make_ctx())


def test_bad_options_raise_naming_the_slot():
  with pytest.raises(ValueError, match="'wav'.*max_frames"):
    PROC.preprocess_input(tf.constant(waveform(800)), make_ctx(attrs={"max_frames": 0}))
  with pytest.raises(ValueError, match="t_audio.*waveform"):
    PROC.preprocess_input(tf.zeros([2, 3, 4]), make_ctx())


def test_target_side_uses_its_own_length():
  ctx = make_ctx(options={"target_audio_max_frames": 6, "audio_max_frames": 50})
  out = PROC.preprocess_target(tf.constant(waveform(3000)), ctx)
  assert out.values.shape == (6, 80) and bool(out.valid)
  np.testing.assert_array_equal(PROC.postprocess(out.values.numpy(),
                                                 {"mask": [1, 1, 1, 0, 0, 0]}),
                                out.values.numpy()[:3])
