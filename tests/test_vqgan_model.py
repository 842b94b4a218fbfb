"""The Flax VQGAN on its own: config rules, shapes and dtypes, the quantizers'
training behaviour (EMA statistics, Gumbel noise, losses), initialisation and
checkpoint I/O. Parity with taming-transformers is in test_vqgan_parity.py.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax.model.vqgan import (PRESETS, VQGAN, VQGANConfig, VQOutput,
                                 abstract_variables, get_config,
                                 init_variables)
from ofa_jax.model.vqgan import io as vq_io
from ofa_jax.model.vqgan import quantize as quantize_lib

BATCH = 2


def tiny_config(quantizer: str = "vq", **overrides) -> VQGANConfig:
  fields = dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), z_channels=32, embed_dim=32, n_embed=64,
                quantizer=quantizer)
  fields.update(overrides)
  return VQGANConfig(**fields)


def random_pixels(seed: int = 0, side: int = 16) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (BATCH, side, side, 3)), jnp.float32)


# ---- config -----------------------------------------------------------------
def test_presets():
  assert set(PRESETS) >= {"f8_8192", "f16_16384", "demo"}
  f8 = get_config("f8_8192")
  assert f8 == VQGANConfig()  # the defaults are OFA's tokenizer
  assert (f8.quantizer, f8.n_embed, f8.downsample_factor) == ("gumbel", 8192, 8)
  assert f8.grid_side(256) == 32
  f16 = get_config("f16_16384")
  assert (f16.quantizer, f16.n_embed, f16.grid_side(256)) == ("vq", 16384, 16)
  assert f16.attn_resolutions == (16,) and f16.ch_mult == (1, 1, 2, 2, 4)
  demo = get_config("demo")
  assert (demo.quantizer, demo.n_embed, demo.resolution) == ("ema", 256, 32)
  assert demo.grid_side(32) == 4
  assert get_config("demo", n_embed=128).n_embed == 128


def test_grid_side_refuses_indivisible_sizes():
  with pytest.raises(ValueError, match="100.*downsample factor 8"):
    get_config("f8_8192").grid_side(100)


@pytest.mark.parametrize("overrides,named", [
    (dict(ch=48), "GroupNorm"),
    (dict(ch=32, ch_mult=(1, 1.5)), "ch_mult"),
    (dict(quantizer="kmeans"), "quantizer"),
    (dict(resolution=21), "resolution=21"),
    (dict(embed_dim=64), "embed_dim == z_channels"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(gumbel_temperature=0.0), "gumbel_temperature"),
    (dict(n_embed=0), "n_embed"),
    (dict(ch_mult=()), "ch_mult"),
    (dict(attn_resolutions=16), "attn_resolutions"),
])
def test_config_refuses_bad_values(overrides, named):
  with pytest.raises(ValueError, match=named):
    tiny_config(**{"quantizer": "gumbel", **overrides})


def test_config_json_round_trip_and_unknown_fields():
  config = get_config("f16_16384")
  payload = json.loads(json.dumps(config.to_dict()))
  assert VQGANConfig.from_dict(payload) == config
  with pytest.raises(ValueError, match="'codebook_size'"):
    VQGANConfig.from_dict({**payload, "codebook_size": 3})
  with pytest.raises(ValueError, match="'codebook_size'"):
    get_config("demo", codebook_size=3)
  with pytest.raises(ValueError, match="unknown VQGAN preset 'f4'"):
    get_config("f4")


# ---- variables ----------------------------------------------------------------
@pytest.mark.parametrize("quantizer,collections,quantize_leaves", [
    ("vq", {"params"}, {"embedding"}),
    ("gumbel", {"params"}, {"embed", "proj"}),
    ("ema", {"params", "vq_ema"}, None),
])
def test_variable_collections(quantizer, collections, quantize_leaves):
  config = tiny_config(quantizer)
  abstract = abstract_variables(config)
  assert set(abstract) == collections
  params = abstract["params"]
  assert {"encoder", "decoder", "quant_conv", "post_quant_conv"} <= set(params)
  if quantize_leaves is None:
    assert "quantize" not in params
    ema = abstract["vq_ema"]["quantize"]
    assert ema["embedding"].shape == ema["embed_avg"].shape == (64, 32)
    assert ema["cluster_size"].shape == (64,)
  else:
    assert set(params["quantize"]) == quantize_leaves


def test_init_variables_matches_the_abstract_tree():
  config = tiny_config("ema")
  variables = init_variables(config, jax.random.PRNGKey(0))
  expected = jax.tree.map(lambda s: (s.shape, s.dtype),
                          abstract_variables(config))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == expected
  # Also traceable (e.g. under jit, for sharded initialisation).
  traced = jax.eval_shape(lambda k: init_variables(config, k),
                          jax.random.PRNGKey(0))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), traced) == expected
  params = variables["params"]
  scale = params["encoder"]["norm_out"]["scale"]
  np.testing.assert_array_equal(scale, np.ones_like(scale))
  kernel = np.asarray(params["encoder"]["conv_in"]["kernel"])  # 3x3x3 -> 32
  bound = 1 / np.sqrt(27)
  assert np.abs(kernel).max() <= bound and kernel.std() > 0.4 * bound
  ema = variables["vq_ema"]["quantize"]
  np.testing.assert_array_equal(ema["embed_avg"], ema["embedding"])
  assert abs(float(jnp.std(ema["embedding"])) - 1.0) < 0.1
  again = init_variables(config, jax.random.PRNGKey(0))
  other = init_variables(config, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(again["params"]["encoder"]["conv_in"]["kernel"],
                                kernel)
  assert not np.array_equal(other["params"]["encoder"]["conv_in"]["kernel"],
                            kernel)


@pytest.mark.slow
def test_init_variables_has_the_modules_distributions():
  """``init_variables`` promises ``VQGAN.init``'s distributions: compare every
  variable's statistics (init itself compiles slowly on CPU: slow test)."""
  config = tiny_config("ema", ch_mult=(1,), attn_resolutions=())
  pixels = jnp.zeros((1, 16, 16, 3))
  reference = jax.jit(lambda k: VQGAN(config).init(k, pixels, train=False))(
      jax.random.PRNGKey(0))
  fast = init_variables(config, jax.random.PRNGKey(0))
  flat_ref = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
  flat_fast = dict(jax.tree_util.tree_flatten_with_path(fast)[0])
  assert set(flat_ref) == set(flat_fast)
  for path, ref in flat_ref.items():
    ref, got = np.asarray(ref), np.asarray(flat_fast[path])
    name = jax.tree_util.keystr(path)
    if ref.std() == 0:
      np.testing.assert_array_equal(got, ref, err_msg=name)
      continue
    assert abs(got.std() / ref.std() - 1) < 0.25, name
    assert abs(np.abs(got).max() / np.abs(ref).max() - 1) < 0.5, name


# ---- forward passes -------------------------------------------------------------
@pytest.mark.parametrize("quantizer", ["vq", "gumbel", "ema"])
def test_encode_decode_shapes_and_types(quantizer):
  config = tiny_config(quantizer)
  model = VQGAN(config)
  variables = init_variables(config, jax.random.PRNGKey(0))
  pixels = random_pixels()

  def run(variables, pixels):
    codes = model.apply(variables, pixels, method="encode_codes")
    decoded = model.apply(variables, codes, method="decode_codes")
    out = model.apply(variables, pixels, train=False)
    return codes, decoded, out

  codes, decoded, out = jax.jit(run)(variables, pixels)
  assert codes.shape == (BATCH, 8, 8) and codes.dtype == jnp.int32
  assert 0 <= int(codes.min()) and int(codes.max()) < config.n_embed
  assert decoded.shape == (BATCH, 16, 16, 3) and decoded.dtype == jnp.float32
  assert isinstance(out, VQOutput)
  np.testing.assert_array_equal(out.codes, codes)  # deterministic pass
  np.testing.assert_allclose(out.reconstruction, decoded, atol=1e-5)
  for name in ("quant_loss", "codebook_loss", "commitment_loss", "perplexity"):
    assert getattr(out, name).shape == (), name
  counts = np.bincount(np.asarray(codes).ravel(), minlength=config.n_embed)
  probs = counts / counts.sum()
  expected = np.exp(-np.sum(probs * np.log(probs + 1e-10)))
  np.testing.assert_allclose(float(out.perplexity), expected, rtol=1e-5)


def test_bad_inputs_are_named():
  config = tiny_config("vq")
  model = VQGAN(config)
  variables = abstract_variables(config)
  with pytest.raises(ValueError, match=r"pixels \[B, H, W, 3\].*\(2, 16, 16, 4\)"):
    jax.eval_shape(lambda v, x: model.apply(v, x, method="encode_codes"),
                   variables, jnp.zeros((2, 16, 16, 4)))
  with pytest.raises(ValueError, match="multiples of 2.*15"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                   variables, jnp.zeros((2, 15, 16, 3)))
  with pytest.raises(ValueError, match="integer codes"):
    jax.eval_shape(lambda v, c: model.apply(v, c, method="decode_codes"),
                   variables, jnp.zeros((2, 8, 8), jnp.float32))


def random_features(config: VQGANConfig, seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(BATCH, 4, 4, config.embed_dim)),
                     jnp.float32)


def quantizer_variables(config: VQGANConfig) -> dict:
  """The quantizer's own variables (its init: two RNG calls, cheap)."""
  quantizer = quantize_lib.make_quantizer(config)
  return jax.jit(lambda k: quantizer.init(
      k, random_features(config), train=False))(jax.random.PRNGKey(0))


@pytest.mark.parametrize("legacy", [False, True])
def test_vq_losses(legacy):
  config = tiny_config("vq", beta=0.5, vq_legacy_loss=legacy)
  quantizer = quantize_lib.make_quantizer(config)
  variables = quantizer_variables(config)
  variables["params"]["embedding"] = jnp.asarray(
      np.random.default_rng(1).normal(
          size=variables["params"]["embedding"].shape), jnp.float32)
  features = random_features(config)

  def loss(codebook, features):
    out = quantizer.apply({"params": {"embedding": codebook}}, features,
                          train=True)
    return out.quant_loss, out

  (_, out), (codebook_grad, feature_grad) = jax.jit(jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True))(variables["params"]["embedding"],
                                           features)
  codebook = np.asarray(variables["params"]["embedding"])
  z = np.asarray(features)
  distances = ((z[..., None, :] - codebook) ** 2).sum(-1)
  np.testing.assert_array_equal(out.codes, distances.argmin(-1))
  z_q = codebook[np.asarray(out.codes)]
  mse = np.mean((z_q - z) ** 2)
  np.testing.assert_allclose(out.codebook_loss, mse, rtol=1e-5)
  np.testing.assert_allclose(out.commitment_loss, mse, rtol=1e-5)
  np.testing.assert_allclose(out.quant_loss, 1.5 * mse, rtol=1e-5)
  np.testing.assert_allclose(out.quantized, z_q, rtol=1e-5, atol=1e-6)
  # beta weighs the commitment (features) term, or the codebook's (legacy).
  codebook_weight, feature_weight = (0.5, 1.0) if legacy else (1.0, 0.5)
  np.testing.assert_allclose(feature_grad, feature_weight * 2 * (z - z_q) / z.size,
                             rtol=1e-4, atol=1e-8)
  expected = np.zeros_like(codebook)
  np.add.at(expected, np.asarray(out.codes).ravel(),
            (codebook_weight * 2 * (z_q - z) / z.size).reshape(-1, 32))
  np.testing.assert_allclose(codebook_grad, expected, rtol=1e-4, atol=1e-8)


def test_ema_update():
  config = tiny_config("ema", ema_decay=0.9, ema_epsilon=1e-3)
  quantizer = quantize_lib.make_quantizer(config)
  variables = quantizer_variables(config)
  features = random_features(config)
  step = jax.jit(lambda v, z: quantizer.apply(v, z, train=True,
                                              mutable=["vq_ema"]))
  out, updates = step(variables, features)

  old = jax.tree.map(np.asarray, variables["vq_ema"])
  flat = np.asarray(features).reshape(-1, config.embed_dim)
  distances = ((flat[:, None, :] - old["embedding"]) ** 2).sum(-1)
  flat_codes = distances.argmin(-1)
  np.testing.assert_array_equal(np.asarray(out.codes).ravel(), flat_codes)
  counts = np.bincount(flat_codes, minlength=config.n_embed)
  sums = np.zeros_like(old["embed_avg"])
  np.add.at(sums, flat_codes, flat)
  cluster_size = 0.9 * old["cluster_size"] + 0.1 * counts
  embed_avg = 0.9 * old["embed_avg"] + 0.1 * sums
  total = cluster_size.sum()
  smoothed = (cluster_size + 1e-3) / (total + config.n_embed * 1e-3) * total
  new = updates["vq_ema"]
  np.testing.assert_allclose(new["cluster_size"], cluster_size, rtol=1e-5)
  np.testing.assert_allclose(new["embed_avg"], embed_avg, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["embedding"], embed_avg / smoothed[:, None],
                             rtol=1e-4, atol=1e-6)
  assert len(np.unique(flat_codes)) > 1  # several codes moved
  # The pass used the codebook from before the update.
  z_q = old["embedding"][flat_codes]
  commitment = np.mean((z_q - flat) ** 2)
  np.testing.assert_allclose(out.commitment_loss, commitment, rtol=1e-5)
  np.testing.assert_allclose(out.quant_loss, config.beta * commitment,
                             rtol=1e-5)
  # No update in evaluation, nor when the collection is not mutable.
  _, frozen = jax.jit(lambda v, z: quantizer.apply(
      v, z, train=False, mutable=["vq_ema"]))(variables, features)
  for name, value in old.items():
    np.testing.assert_array_equal(frozen["vq_ema"][name], value)
  quantizer.apply(variables, features, train=True)  # no error, no update
  # The encoder is pulled by beta * commitment; the codebook has no params.
  grad = jax.grad(lambda z: quantizer.apply(
      variables, z, train=True, mutable=["vq_ema"])[0].quant_loss)(features)
  np.testing.assert_allclose(
      np.asarray(grad).reshape(-1, 32),
      config.beta * 2 * (flat - z_q) / flat.size, rtol=1e-4, atol=1e-8)


def test_ema_update_through_the_model():
  config = tiny_config("ema")
  model = VQGAN(config)
  variables = init_variables(config, jax.random.PRNGKey(0))
  out, updates = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["vq_ema"]))(variables, random_pixels(2))
  counts = np.bincount(np.asarray(out.codes).ravel(), minlength=config.n_embed)
  old = variables["vq_ema"]["quantize"]["cluster_size"]
  np.testing.assert_allclose(updates["vq_ema"]["quantize"]["cluster_size"],
                             0.99 * old + 0.01 * counts, rtol=1e-5)


def test_gumbel_training_noise_comes_from_the_rng():
  config = tiny_config("gumbel", gumbel_kl_weight=0.1)
  quantizer = quantize_lib.make_quantizer(config)
  variables = quantizer_variables(config)
  features = random_features(config)

  def train_pass(z, seed, temperature):
    return quantizer.apply(variables, z, train=True, temperature=temperature,
                           rngs={"gumbel": jax.random.PRNGKey(seed)})

  def feature_grad(temperature):
    return jax.grad(lambda z: jnp.sum(
        train_pass(z, 10, temperature).quantized ** 2))(features)

  @jax.jit
  def run(features):
    return dict(first=train_pass(features, 10, 1.0),
                same=train_pass(features, 10, 1.0),
                other=train_pass(features, 11, 1.0),
                hot=train_pass(features, 10, 100.0),
                evaluation=quantizer.apply(variables, features, train=False),
                logits=quantizer.apply(variables, features, method="logits"),
                grad_cold=feature_grad(1.0), grad_hot=feature_grad(100.0))

  r = run(features)
  first, evaluation = r["first"], r["evaluation"]
  np.testing.assert_array_equal(first.codes, r["same"].codes)
  assert not np.array_equal(first.codes, r["other"].codes)
  # Deterministic without noise: no rng needed, and the logits' argmax.
  np.testing.assert_array_equal(evaluation.codes,
                                np.argmax(r["logits"], axis=-1))
  embed = np.asarray(variables["params"]["embed"])
  np.testing.assert_allclose(evaluation.quantized,
                             embed[np.asarray(evaluation.codes)], rtol=1e-6)
  np.testing.assert_allclose(first.quantized,
                             embed[np.asarray(first.codes)], rtol=1e-5,
                             atol=1e-6)  # hard samples
  # The KL term to the uniform prior, weighted.
  log_q = np.asarray(jax.nn.log_softmax(r["logits"], axis=-1))
  kl = np.mean(np.sum(np.exp(log_q) * (log_q + np.log(config.n_embed)), -1))
  np.testing.assert_allclose(first.quant_loss, 0.1 * kl, rtol=1e-4)
  np.testing.assert_allclose(evaluation.quant_loss, 0.1 * kl, rtol=1e-4)
  assert float(first.codebook_loss) == float(first.commitment_loss) == 0.0
  # `temperature` overrides the config's: the sampled codes (an argmax) stay,
  # the soft weights behind the straight-through gradients change.
  np.testing.assert_array_equal(r["hot"].codes, first.codes)
  assert not np.allclose(r["grad_cold"], r["grad_hot"])


def test_gumbel_training_through_the_model():
  config = tiny_config("gumbel")
  model = VQGAN(config)
  variables = init_variables(config, jax.random.PRNGKey(0))
  pixels = random_pixels(3)
  with pytest.raises(Exception, match="gumbel"):  # the rng stream is needed
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables,
                   pixels)
  out = jax.jit(lambda v, x, k: model.apply(v, x, train=True,
                                            rngs={"gumbel": k}))(
                                                variables, pixels,
                                                jax.random.PRNGKey(4))
  assert out.codes.shape == (BATCH, 8, 8)
  assert out.reconstruction.shape == pixels.shape


# ---- I/O ----------------------------------------------------------------------
def test_io_round_trip(tmp_path):
  config = tiny_config("ema")
  variables = init_variables(config, jax.random.PRNGKey(0))
  directory = str(tmp_path / "vqgan")
  vq_io.save_vqgan(directory, config, variables, metadata={"steps": 3})
  loaded_config, loaded = vq_io.load_vqgan(directory, expected_num_codes=64)
  assert loaded_config == config
  assert vq_io.load_metadata(directory) == {"steps": 3}
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  # Saving again replaces the checkpoint; no staging folder is left behind.
  changed = jax.tree.map(lambda a: a + 1, variables)
  vq_io.save_vqgan(directory, config, changed)
  _, reloaded = vq_io.load_vqgan(directory)
  np.testing.assert_array_equal(
      reloaded["vq_ema"]["quantize"]["cluster_size"],
      variables["vq_ema"]["quantize"]["cluster_size"] + 1)
  assert os.listdir(tmp_path) == ["vqgan"]
  assert sorted(os.listdir(directory)) == sorted([vq_io.CONFIG_FILE,
                                                  vq_io.VARIABLES_DIR])


def test_io_errors(tmp_path):
  config = tiny_config("vq")
  variables = init_variables(config, jax.random.PRNGKey(0))
  directory = str(tmp_path / "vqgan")
  vq_io.save_vqgan(directory, config, variables)
  with pytest.raises(ValueError, match=r"n_embed=64.*expects 8192"):
    vq_io.load_vqgan(directory, expected_num_codes=8192)
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=missing):
    vq_io.load_vqgan(missing)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError,
                     match=os.path.join(str(tmp_path / "empty"),
                                        vq_io.CONFIG_FILE)):
    vq_io.load_vqgan(str(tmp_path / "empty"))
  # Variables that do not fit the config are refused by name, before writing.
  with pytest.raises(ValueError, match=r"params/quantize/embedding"):
    vq_io.save_vqgan(str(tmp_path / "bad"), tiny_config("vq", n_embed=32),
                     variables)
  assert not os.path.exists(tmp_path / "bad")
  # Other files in the directory (a run's logs) are left alone.
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "log.txt").write_text("x")
  vq_io.save_vqgan(str(tmp_path / "run"), config, variables)
  assert sorted(os.listdir(tmp_path / "run")) == sorted([
      "log.txt", vq_io.CONFIG_FILE, vq_io.VARIABLES_DIR])
  with pytest.raises(ValueError, match="not a directory"):
    vq_io.save_vqgan(str(tmp_path / "run" / "log.txt"), config, variables)
