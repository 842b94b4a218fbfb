"""Forward passes of the network: shapes, dtypes, train/eval behaviour, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import features
from ofa_jax.model import config as config_lib
from ofa_jax.model import testing
from ofa_jax.model import transformer
from ofa_jax.model.transformer import OFATransformer
from tests import names as SN


@pytest.fixture(scope="module")
def setup():
  cfg = testing.small_config(dropout=0.1, encoder_drop_path_rate=0.1,
                             decoder_drop_path_rate=0.1)
  batch = testing.random_batch(cfg, seed=0)
  variables = testing.random_variables(cfg, batch, seed=0)
  return cfg, batch, variables


@pytest.fixture(scope="module")
def compiled():
  """Jitted apply functions shared by the tests of this module (one compile each)."""
  memo = {}

  def get(cfg, train=False, mutable=None):
    key = (cfg, train, tuple(mutable or ()))
    if key not in memo:
      memo[key] = testing.apply_fn(cfg, train=train, mutable=mutable)
    return memo[key]

  return get


@pytest.mark.slow
def test_demo_preset_real_init_and_logits_shape():
  """The demo preset at 64 px, with the real initializers."""
  cfg = config_lib.get_config("demo", vocab_size=500)
  batch = testing.random_batch(cfg, batch_size=2, input_length=9,
                               target_length=5, image_size=64)
  variables = jax.jit(lambda r: transformer.init_variables(cfg, r, batch))(
      jax.random.key(0))
  logits = testing.apply_fn(cfg)(variables, batch)
  assert logits.shape == (2, 5, 500) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  params = variables["params"]
  table = np.asarray(params["embed_tokens"].value)
  assert np.all(table[cfg.pad_id] == 0)  # OFA zeroes the pad row
  c_attn = params["encoder"]["layers_0"]["self_attn"]["c_attn"].value
  np.testing.assert_array_equal(c_attn, 1.0)


def test_eval_is_deterministic(setup, compiled):
  cfg, batch, variables = setup
  eval_fn = compiled(cfg)
  a = eval_fn(variables, batch, jax.random.key(1))
  b = eval_fn(variables, batch, jax.random.key(2))
  assert a.shape == (2, 6, cfg.vocab_size) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_train_uses_dropout_and_updates_batch_stats(setup, compiled):
  cfg, batch, variables = setup
  train_fn = compiled(cfg, train=True, mutable=["batch_stats"])
  c, updates = train_fn(variables, batch, jax.random.key(1))
  d, _ = train_fn(variables, batch, jax.random.key(2))
  assert not np.allclose(c, d)
  # BatchNorm running statistics move towards the batch statistics at train.
  old = variables["batch_stats"]["encoder"]["images"]["embed_images"]["bn1"]
  new = updates["batch_stats"]["encoder"]["images"]["embed_images"]["bn1"]
  assert not np.allclose(old["mean"], new["mean"])


def test_text_only_batch_and_absent_images(setup, compiled):
  cfg, batch, variables = setup
  fn = compiled(cfg)
  text_only = {k: v for k, v in batch.items()
               if k not in (SN.IMAGES, SN.IMAGE_MASK)}
  logits = fn(variables, text_only)
  assert logits.shape == (2, 6, cfg.vocab_size)
  # An all-masked image slot is ignored: same logits as without images.
  masked = dict(batch, **{SN.IMAGE_MASK: np.zeros((2, 1), np.int32)})
  np.testing.assert_allclose(fn(variables, masked), logits, atol=1e-5,
                             rtol=1e-5)


@pytest.mark.slow
def test_padding_content_does_not_leak(setup, compiled):
  """Changing what sits under encoder pads changes nothing."""
  cfg, batch, variables = setup
  fn = compiled(cfg)
  enc = batch[features.ENCODER_INPUT_TOKENS]
  assert enc[-1, -1] == cfg.pad_id
  shorter = dict(batch)
  shorter[features.ENCODER_INPUT_TOKENS] = enc[:, :-1]  # drop one pad column
  np.testing.assert_allclose(fn(variables, batch)[-1],
                             fn(variables, shorter)[-1], atol=1e-5, rtol=1e-5)


def test_bfloat16_runs_close_to_float32(setup, compiled):
  cfg, batch, variables = setup
  ref = compiled(cfg)(variables, batch)
  out = compiled(cfg.replace(dtype="bfloat16"))(variables, batch)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  scale = float(np.max(np.abs(ref)))
  assert float(np.max(np.abs(out - ref))) < 0.05 * scale
  assert not np.array_equal(out, ref)  # it really computed in bf16


# Fused attention must also carry the 2D image biases, so it sees an image; remat
# only wraps the transformer layers, so a text-only batch (no ResNet to compile,
# and the reference already compiled by the text-only test) checks it as well.
@pytest.mark.parametrize("option,with_images", [("remat", False),
                                                ("use_dot_product_attention", True)])
def test_remat_and_fused_attention_match_reference(setup, compiled, option,
                                                   with_images):
  cfg, batch, variables = setup
  if not with_images:
    batch = {k: v for k, v in batch.items()
             if k not in (SN.IMAGES, SN.IMAGE_MASK)}
  ref = compiled(cfg)(variables, batch)
  out = compiled(cfg.replace(**{option: True}))(variables, batch)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_remat_gradients_match(setup):
  cfg, batch, variables = setup
  batch = {k: v for k, v in batch.items()  # text-only keeps the compile small
           if k not in (SN.IMAGES, SN.IMAGE_MASK)}

  def grads(c):
    model = OFATransformer(c)

    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, batch,
                              train=True, rngs={"dropout": jax.random.key(0)},
                              mutable=["batch_stats"])
      return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

    return jax.jit(jax.grad(loss))(variables["params"])

  ref, out = grads(cfg), grads(cfg.replace(remat=True))
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bad_inputs_name_the_feature(setup):
  cfg, batch, variables = setup
  model = OFATransformer(cfg)

  def check(bad_batch, message):
    with pytest.raises(ValueError, match=message):  # raised while tracing
      jax.eval_shape(lambda: model.apply(variables, bad_batch, train=False))

  check({features.ENCODER_INPUT_TOKENS: batch[features.ENCODER_INPUT_TOKENS]},
        "decoder_input_tokens")
  check(dict(batch, images=batch["images"][..., :2]), "images")
  check(dict(batch, image_mask=np.ones((2, 3), np.int32)), "image_mask")
  check(dict(batch, image_text_offset=np.zeros((2,), np.int32)),
        "image_text_offset")
  long = np.full((2, cfg.max_source_positions + 1), 5, np.int32)
  check(dict(batch, encoder_input_tokens=long), "max_source_positions")
  long = np.full((2, cfg.max_target_positions + 1), 5, np.int32)
  check(dict(batch, decoder_input_tokens=long), "max_target_positions")


@pytest.mark.slow
def test_packed_batch_matches_separate_examples(setup):
  """SeqIO packing: two examples in one row give their unpacked logits."""
  cfg, _, variables = setup
  rs = np.random.RandomState(7)
  enc_a, enc_b = rs.randint(4, 300, 3), rs.randint(4, 300, 4)
  dec_a, dec_b = rs.randint(4, 300, 3), rs.randint(4, 300, 2)
  pad = cfg.pad_id
  separate = {
      features.ENCODER_INPUT_TOKENS: np.array(
          [list(enc_a) + [pad], list(enc_b)], np.int32),
      features.DECODER_INPUT_TOKENS: np.array(
          [list(dec_a), list(dec_b) + [pad]], np.int32),
  }
  packed = {
      features.ENCODER_INPUT_TOKENS: np.concatenate([enc_a, enc_b])[None],
      features.ENCODER_SEGMENT_IDS: np.array([[1, 1, 1, 2, 2, 2, 2]]),
      features.ENCODER_POSITIONS: np.array([[0, 1, 2, 0, 1, 2, 3]]),
      features.DECODER_INPUT_TOKENS: np.concatenate([dec_a, dec_b])[None],
      features.DECODER_SEGMENT_IDS: np.array([[1, 1, 1, 2, 2]]),
      features.DECODER_POSITIONS: np.array([[0, 1, 2, 0, 1]]),
  }
  fn = testing.apply_fn(cfg)
  want = fn(variables, separate)
  got = fn(variables, packed)
  np.testing.assert_allclose(got[0, :3], want[0, :3], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got[0, 3:], want[1, :2], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="decoder_segment_ids"):
    no_dec_seg = {k: v for k, v in packed.items()
                  if k != features.DECODER_SEGMENT_IDS}
    jax.eval_shape(lambda: OFATransformer(cfg).apply(variables, no_dec_seg,
                                                     train=False))
