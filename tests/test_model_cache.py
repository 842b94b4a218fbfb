"""Cached one-step decoding gives the logits of the full teacher-forced pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import features
from ofa_jax.model import testing
from ofa_jax.model import transformer
from ofa_jax.model.transformer import OFATransformer


@pytest.fixture(scope="module")
def setup():
  cfg = testing.small_config()
  # No encoder images: what is checked is the decoder's cache, and the ResNet
  # would only add compile time (codes in the decoder do not need them).
  batch = testing.random_batch(cfg, seed=5, batch_size=3, target_length=7,
                               num_images=0)
  dec = batch[features.DECODER_INPUT_TOKENS]
  dec[1, 1:] = 40 + np.arange(6)  # stand-ins for code ids: sample 1 decodes codes
  dec[2, -2:] = cfg.pad_id  # a finished hypothesis keeps feeding pads
  batch[transformer.DECODER_CODE_MASK] = np.array([False, True, False])
  variables = testing.random_variables(cfg, batch, seed=2)
  return cfg, batch, variables


def _incremental(cfg, variables, batch, max_len, explicit_step=False):
  model = OFATransformer(cfg)
  tokens = batch[features.DECODER_INPUT_TOKENS]
  b, length = tokens.shape

  @jax.jit
  def run(variables, batch):
    encoded = model.apply(variables, batch, train=False, method=model.encode)
    cache = transformer.init_cache(cfg, b, max_len)

    def body(cache, i):
      step_tokens = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
      logits, updates = model.apply(
          {**variables, "cache": cache}, encoded, step_tokens, decode=True,
          decode_step=i if explicit_step else None, mutable=["cache"],
          method=model.decode)
      return updates["cache"], logits[:, 0]

    cache, logits = jax.lax.scan(body, cache, jnp.arange(length))
    return logits.transpose(1, 0, 2), cache

  return run(variables, batch)


@pytest.mark.slow
def test_cached_decoding_matches_full_forward(setup):
  cfg, batch, variables = setup
  forward = testing.apply_fn(cfg)
  full = forward(variables, batch)
  steps, cache = _incremental(cfg, variables, batch, max_len=10)
  np.testing.assert_allclose(steps, full, atol=1e-5, rtol=1e-5)
  assert int(cache["decoder"]["cache_index"]) == 7
  # The code sample really took the code path (image positions, code LN).
  text_path = forward(variables, dict(
      batch, **{transformer.DECODER_CODE_MASK: np.zeros(3, bool)}))
  assert not np.allclose(text_path[1], full[1], atol=1e-3)
  np.testing.assert_allclose(text_path[0], full[0], atol=1e-6)


@pytest.mark.slow
def test_entangled_positions_change_logits_and_keep_the_cache_exact(setup):
  cfg, batch, variables = setup
  entangled = cfg.replace(entangle_position_embedding=True)
  full = testing.apply_fn(entangled)(variables, batch)  # same parameters
  assert not np.allclose(full, testing.apply_fn(cfg)(variables, batch), atol=1e-3)
  steps, _ = _incremental(entangled, variables, batch, max_len=10)
  np.testing.assert_allclose(steps, full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_cached_decoding_with_fused_attention_and_explicit_steps(setup):
  cfg, batch, variables = setup
  cfg = cfg.replace(use_dot_product_attention=True)
  full = testing.apply_fn(cfg)(variables, batch)
  steps, _ = _incremental(cfg, variables, batch, max_len=7,
                          explicit_step=True)
  np.testing.assert_allclose(steps, full, atol=1e-5, rtol=1e-5)


def test_init_cache_shapes(setup):
  cfg, _, _ = setup
  cache = transformer.init_cache(cfg, batch_size=4, max_decode_length=9)
  dec = cache["decoder"]
  h, hd = cfg.attention_heads, cfg.head_dim
  assert dec["cache_index"].shape == () and int(dec["cache_index"]) == 0
  assert dec["pos_key"].shape == (4, h, 9, hd)
  assert dec["key_valid"].shape == (4, 9)
  for i in range(cfg.decoder_layers):
    layer = dec[f"layers_{i}"]["self_attn"]
    assert layer["cached_key"].shape == (4, h, 9, hd)
    assert layer["cached_value"].shape == (4, h, 9, hd)


def test_cached_decoding_rejects_several_tokens(setup):
  cfg, batch, variables = setup
  model = OFATransformer(cfg)
  cache = transformer.init_cache(cfg, 3, 8)

  def two_tokens():
    encoded = model.apply(variables, batch, train=False, method=model.encode)
    return model.apply({**variables, "cache": cache}, encoded,
                       batch[features.DECODER_INPUT_TOKENS][:, :2],
                       decode=True, mutable=["cache"], method=model.decode)

  with pytest.raises(ValueError, match="one token per step"):
    jax.eval_shape(two_tokens)
