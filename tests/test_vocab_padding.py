"""The vocabulary padded for model parallelism: padding ids are never produced.

`OFAConfig.vocab_pad_multiple` gives the shared embedding `padded_vocab_size`
rows; these tests check that the padded model computes the unpadded model's
numbers on the real ids, that its padding logits never win (even when the
padding rows are adversarially large), that the loss and its label smoothing
leave them out, and that OFA checkpoints convert into the padded shape and
back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import checkpoint_conversion as cc
from ofa_jax import checkpoint_conversion_names as names
from ofa_jax import features as F
from ofa_jax import models
from ofa_jax.checkpoint_conversion_names import ConversionError
from ofa_jax.model import config as config_lib
from ofa_jax.model import testing

_VOCAB = 300  # pads to 384 with the default multiple of 128
_FLOAT_MIN = float(np.finfo(np.float32).min)


def test_padded_vocab_size():
  ofa = config_lib.get_config("large", vocab_pad_multiple=128)
  assert ofa.vocab_size == 59457 and ofa.padded_vocab_size == 59520
  assert config_lib.get_config("large").padded_vocab_size == 59457  # default 1
  assert config_lib.get_config("tiny", vocab_size=256,
                               vocab_pad_multiple=128).padded_vocab_size == 256
  with pytest.raises(ValueError, match="vocab_pad_multiple=0"):
    config_lib.get_config("tiny", vocab_pad_multiple=0)


def _pad_rows(variables, rows, fill=0.0):
  """The variables with the embedding's extra rows set to `fill`."""
  params = dict(variables["params"])
  emb = np.asarray(params["embed_tokens"])
  extra = np.full((rows - emb.shape[0], emb.shape[1]), fill, emb.dtype)
  params["embed_tokens"] = jnp.asarray(np.concatenate([emb, extra]))
  return {**variables, "params": params}


@pytest.fixture(scope="module")
def padded_and_plain():
  """(plain config, padded config, text batch, plain variables)."""
  plain = testing.small_config(vocab_size=_VOCAB, encoder_layers=1,
                               decoder_layers=1)
  padded = plain.replace(vocab_pad_multiple=128)
  batch = testing.random_batch(plain, num_images=0)
  variables = testing.random_variables(plain, batch)
  return plain, padded, batch, variables


def test_padded_logits_match_on_real_ids_and_never_win(padded_and_plain):
  plain, padded, batch, variables = padded_and_plain
  assert padded.padded_vocab_size == 384
  ref = testing.apply_fn(plain)(variables, batch)
  # Padding rows far larger than any real row: unmasked, they would win
  # every argmax; masked, they change nothing.
  big = _pad_rows(variables, padded.padded_vocab_size, fill=50.0)
  out = testing.apply_fn(padded)(big, batch)
  assert out.shape == ref.shape[:-1] + (384,)
  np.testing.assert_allclose(out[..., :_VOCAB], ref, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(out[..., _VOCAB:]) == _FLOAT_MIN)
  assert np.all(np.argmax(out, axis=-1) < _VOCAB)
  probs = jax.nn.softmax(out, axis=-1)
  assert float(jnp.max(probs[..., _VOCAB:])) == 0.0


def test_fresh_padding_rows_are_zero_and_bins_stay_at_the_vocabulary_end():
  from ofa_jax.model import transformer  # pylint: disable=g-import-not-at-top
  init = transformer._embed_init(pad_id=1, std=0.02, vocab_size=_VOCAB,  # pylint: disable=protected-access
                                 ordered_bins=16)
  emb = np.asarray(jax.jit(init, static_argnums=1)(jax.random.key(0),
                                                   (384, 64)))
  assert not np.any(emb[_VOCAB:]) and not np.any(emb[1])
  assert np.all(np.any(emb[2:_VOCAB] != 0, axis=1))
  bins = emb[_VOCAB - 16:_VOCAB]
  # Ordered bins change smoothly: neighbours are closer than random rows.
  assert np.mean(np.linalg.norm(np.diff(bins, axis=0), axis=1)) < 0.5 * np.mean(
      np.linalg.norm(emb[10:25] - emb[30:45], axis=1))


@pytest.mark.parametrize("constrain_by_kind", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_ignores_padding_ids(constrain_by_kind, label_smoothing):
  rs = np.random.RandomState(0)
  logits = rs.randn(2, 5, _VOCAB).astype(np.float32)
  targets = rs.randint(4, 200, (2, 5)).astype(np.int32)
  kinds = np.full((2, 5), int(F.TokenKind.TEXT), np.int32)
  # Text is [0, 200), codes [200, 280), bins [280, 300).
  ranges = np.zeros((len(F.TokenKind), 2, 2), np.int32)
  ranges[:, 0] = (0, _VOCAB)
  ranges[int(F.TokenKind.TEXT), 0] = (0, 200)
  kw = dict(kind_ranges=ranges, label_smoothing=label_smoothing,
            constrain_by_kind=constrain_by_kind)
  ref = models.token_losses(jnp.asarray(logits), jnp.asarray(targets),
                            jnp.asarray(kinds), **kw)
  # Padding logits as the model emits them, and as large ones (a model that
  # did not mask): neither may change the loss once num_ids is given.
  for fill in (_FLOAT_MIN, 30.0):
    padded = np.concatenate(
        [logits, np.full((2, 5, 84), fill, np.float32)], axis=-1)
    out = models.token_losses(jnp.asarray(padded), jnp.asarray(targets),
                              jnp.asarray(kinds), num_ids=_VOCAB, **kw)
    for key in ("loss", "nll"):
      np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-5,
                                 err_msg=f"{key}, fill {fill}")
    np.testing.assert_array_equal(out["correct"], ref["correct"])
  with pytest.raises(ValueError, match="num_ids=400"):
    models.token_losses(jnp.asarray(logits), jnp.asarray(targets),
                        jnp.asarray(kinds), num_ids=400, **kw)


def test_ofa_checkpoint_converts_into_the_padded_embedding_and_back():
  plain = config_lib.get_config("demo", vocab_size=64)
  padded = plain.replace(vocab_pad_multiple=128)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                           cc.abstract_variables(plain))
  state_dict = cc.to_state_dict(variables, names.HF)
  assert state_dict["encoder.embed_tokens.weight"].shape[0] == 64
  converted, _ = cc.convert_state_dict(state_dict, padded)
  emb = converted["params"]["embed_tokens"]
  assert emb.shape == (128, plain.d_model)
  np.testing.assert_array_equal(emb[:64], variables["params"]["embed_tokens"])
  assert not np.any(emb[64:])
  # Every other variable is OFA's, unchanged; the reverse map drops the padding.
  back = cc.to_state_dict(converted, names.HF, vocab_size=64)
  assert back.keys() == state_dict.keys()
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  # A checkpoint of another vocabulary is still a named shape mismatch.
  other = dict(state_dict)
  for key in [k for k in other if k.endswith("embed_tokens.weight")
              or k == "decoder.output_projection.weight"]:
    other[key] = other[key][:60]
  with pytest.raises(ConversionError, match="shape mismatch"):
    cc.convert_state_dict(other, padded)
