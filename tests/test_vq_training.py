"""Tests of VQGAN training: images, losses, discriminator, perceptual term, loop, CLI."""

from __future__ import annotations

import io
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from ofa_jax import log_setup
from ofa_jax import train_metrics
from ofa_jax import train_vq
from ofa_jax.model.vqgan import io as vqgan_io
from ofa_jax.model.vqgan import model as vqgan_model
from ofa_jax.model.vqgan.config import get_config
from ofa_jax.vq_training import codebook
from ofa_jax.vq_training import discriminator as disc_lib
from ofa_jax.vq_training import images
from ofa_jax.vq_training import loop
from ofa_jax.vq_training import losses
from ofa_jax.vq_training import perceptual

RED, BLUE = (220, 40, 40), (40, 80, 220)
# A tiny VQGAN: 16 px images, f=2 -> 8x8 codes out of 16; compiles in seconds.
TINY = {"resolution": 16, "ch": 32, "ch_mult": (1, 1), "num_res_blocks": 1,
        "attn_resolutions": (), "z_channels": 32, "embed_dim": 32,
        "n_embed": 16, "quantizer": "ema"}


def _png(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  return buf.getvalue()


def _solid(colour, side=16) -> np.ndarray:
  return np.full((side, side, 3), colour, np.uint8)


def _write_two_colours(directory, count=8, corrupt=0):
  os.makedirs(directory, exist_ok=True)
  for i in range(count):
    with open(os.path.join(directory, f"img_{i:02d}.png"), "wb") as f:
      f.write(_png(_solid(RED if i % 2 else BLUE)))
  for i in range(corrupt):
    with open(os.path.join(directory, f"broken_{i}.png"), "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\nthis is not an image")
  return str(directory)


# ---- images -------------------------------------------------------------------
def test_list_image_files_recursive_sorted_and_filtered(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / "a").mkdir()
  for name in ("b/2.PNG", "a/1.jpg", "a/0.bmp", "z.jpeg", "notes.txt"):
    (tmp_path / name).write_bytes(b"x")
  got = [os.path.relpath(p, tmp_path) for p in images.list_image_files(
      str(tmp_path))]
  assert got == ["a/0.bmp", "a/1.jpg", "b/2.PNG", "z.jpeg"]


def test_empty_or_missing_directory_is_refused_by_name(tmp_path):
  (tmp_path / "readme.txt").write_text("no images here")
  with pytest.raises(ValueError, match=str(tmp_path)):
    images.ImageFolder(str(tmp_path), 16)
  with pytest.raises(ValueError, match="does not exist"):
    images.list_image_files(str(tmp_path / "missing"))


def test_decode_crops_resizes_and_converts_to_rgb():
  grey = np.zeros((20, 40), np.uint8)
  grey[:, 10:30] = 200  # the centre square is all 200
  out = images.decode_image(_png(grey), 10)
  assert out.shape == (10, 10, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, 200)
  with pytest.raises(images.UndecodableImageError, match="where.png"):
    images.decode_image(b"garbage", 10, where="where.png")


def test_corrupt_files_are_skipped_counted_and_reported(tmp_path, caplog):
  directory = _write_two_colours(tmp_path, count=3, corrupt=2)
  # A truncated PNG fails in the middle of decoding, not at the header.
  with open(os.path.join(directory, "truncated.png"), "wb") as f:
    f.write(_png(np.random.default_rng(0).integers(
        0, 255, (16, 16, 3), np.uint8))[:60])
  folder = images.ImageFolder(directory, 16)
  with caplog.at_level(logging.WARNING):
    first = folder.first_images(10)
  assert first.shape == (3, 16, 16, 3)
  assert len(folder.skipped) == 3
  assert "broken_0.png" in caplog.text
  batch = next(folder.batches(4, seed=0))
  assert batch.shape == (4, 16, 16, 3)
  assert batch.min() >= -1 and batch.max() <= 1
  assert images.describe_skips(folder.skipped, 6).startswith(
      "3 of 6 image files could not be decoded")


def test_a_folder_where_nothing_decodes_is_refused(tmp_path):
  directory = _write_two_colours(tmp_path, count=0, corrupt=2)
  folder = images.ImageFolder(directory, 16)
  with pytest.raises(ValueError, match="none of its 2 image files decodes"):
    next(folder.batches(2))


def test_batches_are_deterministic_and_flip_mirrors(tmp_path):
  directory = str(tmp_path)
  for i in range(5):
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, :4] = 40 * i + 10  # a bar on the left, its value names the file
    Image.fromarray(pixels).save(os.path.join(directory, f"{i}.png"))
  a = next(images.ImageFolder(directory, 16).batches(5, seed=3))
  b = next(images.ImageFolder(directory, 16).batches(5, seed=3))
  np.testing.assert_array_equal(a, b)
  assert sorted(a[:, 0, 0, 0].tolist()) == sorted(
      images.to_model_pixels(np.array([10, 50, 90, 130, 170])).tolist())
  flipped = next(images.ImageFolder(directory, 16, random_flip=True
                                    ).batches(40, seed=0))
  left = flipped[:, 0, 0, 0] > -1
  right = flipped[:, 0, -1, 0] > -1
  assert left.any() and right.any() and not (left & right).any()


# ---- losses -------------------------------------------------------------------
def test_l1_and_psnr_by_hand():
  x = np.zeros((2, 2, 2, 3), np.float32)
  rec = np.full((2, 2, 2, 3), 0.2, np.float32)
  rec[1] = -0.1
  assert float(jax.jit(losses.l1_loss)(x, rec)) == pytest.approx(0.15)
  # MSE on [0, 1]: 0.04 / 4 = 0.01 -> 20 dB; 0.01 / 4 = 0.0025 -> 26.02 dB.
  psnr = jax.jit(losses.psnr)
  assert float(psnr(x, rec)) == pytest.approx(
      (20.0 + 10 * np.log10(400.0)) / 2, rel=1e-5)
  # Reconstructions are clipped to [-1, 1] before PSNR.
  assert float(psnr(np.ones((2, 2, 2, 3), np.float32), np.full(
      (2, 2, 2, 3), 5.0, np.float32))) == pytest.approx(100.0)


def test_hinge_losses_by_hand():
  real = np.array([2.0, 0.5], np.float32)
  fake = np.array([-2.0, 0.5], np.float32)
  # relu(1 - real) = [0, 0.5], relu(1 + fake) = [0, 1.5]: 0.5 * (0.25 + 0.75).
  assert float(jax.jit(losses.hinge_discriminator_loss)(
      real, fake)) == pytest.approx(0.5)
  assert float(jax.jit(losses.generator_adversarial_loss)(
      fake)) == pytest.approx(0.75)


def test_adaptive_weight_by_hand():
  weight = jax.jit(losses.adaptive_weight)
  w = weight(np.array([3.0, 4.0], np.float32), np.array([0.0, 2.0], np.float32))
  assert float(w) == pytest.approx(5.0 / (2.0 + 1e-4))
  assert float(weight(np.ones(2, np.float32), np.zeros(2, np.float32))) == 1e4
  grad = jax.jit(jax.grad(lambda g: losses.adaptive_weight(g, jnp.ones(2))))(
      np.array([1.0, 2.0], np.float32))
  np.testing.assert_array_equal(grad, 0.0)  # no gradient through the weight


def test_code_histogram_and_perplexity():
  counts = jax.jit(losses.code_counts, static_argnums=1)(
      np.array([[0, 1], [1, 0]]), 4)
  np.testing.assert_array_equal(counts, [2, 2, 0, 0])
  perplexity = jax.jit(losses.perplexity_of_counts)
  assert float(perplexity(counts)) == pytest.approx(2.0)
  assert float(perplexity(np.array([4, 0, 0, 0]))) == pytest.approx(1.0)


# ---- discriminator ------------------------------------------------------------
def test_discriminator_shapes():
  disc = disc_lib.PatchDiscriminator(channels=8, num_layers=3)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  # Shapes only (abstract evaluation): nothing is computed.
  variables = jax.eval_shape(lambda: disc.init(
      jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False))
  logits = jax.eval_shape(lambda v, y: disc.apply(v, y, train=False),
                          variables, x)
  assert logits.shape == (2, 6, 6, 1)
  assert disc_lib.patch_grid(64, 3) == 6
  kernels = {k: v["kernel"].shape for k, v in variables["params"].items()
             if "kernel" in v}
  assert kernels == {"conv_0": (4, 4, 3, 8), "conv_1": (4, 4, 8, 16),
                     "conv_2": (4, 4, 16, 32), "conv_3": (4, 4, 32, 64),
                     "logits": (4, 4, 64, 1)}
  assert "bias" not in variables["params"]["conv_1"]
  drawn = disc_lib.init_discriminator(disc, (64, 64, 3), seed=0)
  assert jax.tree_util.tree_map(jnp.shape, drawn) == jax.tree_util.tree_map(
      lambda a: a.shape, variables)
  np.testing.assert_array_equal(drawn["batch_stats"]["norm_1"]["var"], 1.0)
  assert abs(float(jnp.std(drawn["params"]["conv_3"]["kernel"])) - 0.02) < 1e-3
  with pytest.raises(ValueError, match="fewer discriminator layers"):
    disc_lib.patch_grid(16, 3)


def test_discriminator_matches_taming_nlayer_discriminator():
  torch = pytest.importorskip("torch")
  from taming.modules.discriminator import model as taming_disc  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  ref = taming_disc.NLayerDiscriminator(input_nc=3, ndf=8, n_layers=2)
  ref.apply(taming_disc.weights_init).train()
  main = ref.main
  conv = lambda m: {"kernel": jnp.asarray(m.weight.detach().numpy().transpose(
      2, 3, 1, 0)), **({"bias": jnp.asarray(m.bias.detach().numpy())}
                       if m.bias is not None else {})}
  norm = lambda m: {"scale": jnp.asarray(m.weight.detach().numpy()),
                    "bias": jnp.asarray(m.bias.detach().numpy())}
  params = {"conv_0": conv(main[0]), "conv_1": conv(main[2]),
            "norm_1": norm(main[3]), "conv_2": conv(main[5]),
            "norm_2": norm(main[6]), "logits": conv(main[8])}
  stats = {n: {"mean": jnp.zeros(c), "var": jnp.ones(c)}
           for n, c in (("norm_1", 16), ("norm_2", 32))}
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got, _ = jax.jit(lambda v, y: disc_lib.PatchDiscriminator(8, 2).apply(
      v, y, train=True, mutable=["batch_stats"]))(
          {"params": params, "batch_stats": stats}, x)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want,
                             atol=1e-4)


# ---- perceptual ----------------------------------------------------------------
def _random_state_dict(seed: int, names: str) -> dict[str, np.ndarray]:
  """Random VGG16 + lin weights under LPIPS ("net") or torchvision names."""
  rng = np.random.default_rng(seed)
  out = {}
  shapes = perceptual._conv_shapes()  # pylint: disable=protected-access
  for (block, indices) in enumerate(perceptual.VGG16_CONV_INDICES):
    for index in indices:
      cin, cout = shapes.pop(0)
      prefix = (f"net.slice{block + 1}.{index}" if names == "net"
                else f"features.{index}")
      out[f"{prefix}.weight"] = rng.normal(0, (2 / (9 * cin)) ** 0.5,
                                           (cout, cin, 3, 3)).astype(np.float32)
      out[f"{prefix}.bias"] = rng.normal(0, 0.01, cout).astype(np.float32)
  for k, block in enumerate(perceptual.VGG16_BLOCKS):
    out[f"lin{k}.model.1.weight"] = rng.uniform(
        0, 1 / block[-1], (1, block[-1], 1, 1)).astype(np.float32)
  return out


def _torch_lpips(state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
                 ) -> np.ndarray:
  """The LPIPS computation written with torch ops (NCHW), as a reference."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
  scale = torch.tensor([.458, .448, .450])[None, :, None, None]

  def features(img):
    h = (torch.from_numpy(img.transpose(0, 3, 1, 2)) - shift) / scale
    outs = []
    for block, indices in enumerate(perceptual.VGG16_CONV_INDICES):
      if block:
        h = F.max_pool2d(h, 2, 2)
      for index in indices:
        h = F.relu(F.conv2d(h, torch.from_numpy(state[f"features.{index}.weight"]),
                            torch.from_numpy(state[f"features.{index}.bias"]),
                            padding=1))
      outs.append(h)
    return outs

  total = 0
  for k, (a, b) in enumerate(zip(features(x), features(y))):
    a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    lin = torch.from_numpy(state[f"lin{k}.model.1.weight"])
    total = total + F.conv2d((a - b) ** 2, lin).mean((2, 3))
  return total[:, 0].numpy()


def test_perceptual_distance_matches_a_torch_reference(tmp_path):
  torch = pytest.importorskip("torch")
  state = _random_state_dict(0, "features")
  path = str(tmp_path / "vgg_lpips.npz")
  np.savez(path, **state)
  weights = perceptual.load_perceptual_weights(path)
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  distance = jax.jit(perceptual.perceptual_distance)
  got = distance(weights, np.concatenate([x, x]), np.concatenate([y, x]))
  with torch.no_grad():
    want = _torch_lpips(state, x, y)
  np.testing.assert_allclose(np.asarray(got[:2]), want, rtol=2e-4, atol=1e-6)
  assert (np.asarray(got[:2]) > 0).all()
  np.testing.assert_allclose(got[2:], 0.0, atol=1e-6)  # d(x, x) = 0


def test_perceptual_weights_from_pth_with_lpips_names_and_errors(tmp_path):
  torch = pytest.importorskip("torch")
  net = _random_state_dict(0, "net")
  # VGG and lin layers in two files, under a taming checkpoint's prefix.
  vgg = {f"loss.perceptual_loss.{k}": torch.from_numpy(v)
         for k, v in net.items() if k.startswith("net.")}
  lin = {k: torch.from_numpy(v) for k, v in net.items() if k.startswith("lin")}
  torch.save(vgg, str(tmp_path / "vgg.pth"))
  torch.save(lin, str(tmp_path / "lin.pth"))
  np.savez(str(tmp_path / "all.npz"), **_random_state_dict(0, "features"))
  from_pth = perceptual.load_perceptual_weights(
      f"{tmp_path / 'vgg.pth'},{tmp_path / 'lin.pth'}")
  from_npz = perceptual.load_perceptual_weights(str(tmp_path / "all.npz"))
  for a, b in zip(jax.tree_util.tree_leaves(from_pth),
                  jax.tree_util.tree_leaves(from_npz)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"lack 5 arrays: lin0\.model\.1\.weight"):
    perceptual.load_perceptual_weights(str(tmp_path / "vgg.pth"))
  with pytest.raises(ValueError, match="does not exist"):
    perceptual.load_perceptual_weights(str(tmp_path / "nope.npz"))


# ---- codebook upkeep -------------------------------------------------------------
def test_codebook_starts_at_encoder_features():
  config = get_config("demo", **TINY)
  variables = vqgan_model.init_variables(config, jax.random.PRNGKey(0))
  pixels = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1)
  # One compiled program for both (XLA shares the encoder pass).
  out, features = jax.jit(lambda v, p: (
      codebook.init_codebook_from_data(config, v, p, jax.random.PRNGKey(2)),
      vqgan_model.VQGAN(config).apply(
          v, p, method=vqgan_model.VQGAN.encode_features)))(variables, pixels)
  flat = np.asarray(features).reshape(-1, config.embed_dim)
  table = out["vq_ema"]["quantize"]
  rows = np.asarray(table["embedding"])
  # Every row is one of the 128 feature vectors, no two the same position.
  match = [np.flatnonzero(np.all(np.isclose(flat, r, atol=1e-6), axis=1))
           for r in rows]
  assert all(len(m) >= 1 for m in match)
  assert len({int(m[0]) for m in match}) == config.n_embed
  np.testing.assert_allclose(table["embed_avg"],
                             rows * np.asarray(table["cluster_size"])[:, None])


def test_dead_codes_restart_on_batch_features_by_hand():
  ema = {"quantize": {"embedding": jnp.zeros((4, 2)),
                      "cluster_size": jnp.full((4,), 0.5),
                      "embed_avg": jnp.zeros((4, 2))}}
  features = jnp.tile(jnp.array([3.0, 4.0]), (1, 2, 2, 1))
  new, last_used, restarted = codebook.restart_dead_codes(
      ema, features, counts=jnp.array([1, 0, 0, 0]),
      last_used=jnp.array([0, 0, 3, 0]), step=jnp.array(5),
      rng=jax.random.PRNGKey(0), restart_after=3)
  table = new["quantize"]
  # Code 0 was used now and code 2 two steps ago: both kept. 1 and 3 restart.
  assert int(restarted) == 2
  np.testing.assert_array_equal(last_used, [5, 5, 3, 5])
  np.testing.assert_array_equal(table["embedding"],
                                [[0, 0], [3, 4], [0, 0], [3, 4]])
  np.testing.assert_array_equal(table["cluster_size"], [0.5, 1, 0.5, 1])
  np.testing.assert_array_equal(table["embed_avg"], table["embedding"])


# ---- the loop -------------------------------------------------------------------
def test_window_log_stops_on_a_non_finite_loss():
  class Writer:
    def write_scalars(self, step, scalars):
      raise AssertionError("nothing may be written")

    def flush(self):
      pass

  window = loop._WindowLog(Writer(), 10)  # pylint: disable=protected-access
  window.add({"loss": jnp.array(np.nan), "code_counts": jnp.zeros(4, jnp.int32)})
  with pytest.raises(train_metrics.NonFiniteLossError, match="step 1"):
    window.flush(1)


def test_out_dir_with_foreign_files_is_refused(tmp_path):
  (tmp_path / "thesis.tex").write_text("precious")
  with pytest.raises(ValueError, match="thesis.tex"):
    loop.check_out_dir(str(tmp_path))


def _clean_gin_and_logging():
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  log_setup.reset()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny training through the CLI (one compilation for the e2e tests)."""
  image_dir = _write_two_colours(tmp_path_factory.mktemp("images"), count=8,
                                 corrupt=1)
  out_dir = str(tmp_path_factory.mktemp("runs") / "vq")
  _clean_gin_and_logging()
  try:
    rc = train_vq.main([
        "--gin_file=vq/demo.gin", f"--gin.IMAGE_DIR='{image_dir}'",
        f"--gin.VQ_DIR='{out_dir}'", "--gin.VQ_OVERRIDES=" + repr(TINY),
        "--gin.TRAIN_STEPS=40", "--gin.BATCH_SIZE=4",
        "--gin.LEARNING_RATE=3e-3", "--gin.LOG_PERIOD=10",
        "--gin.CHECKPOINT_PERIOD=20", "--gin.RESTART_DEAD_AFTER=10"])
  finally:
    _clean_gin_and_logging()
  return rc, get_config("demo", **TINY), image_dir, out_dir


@pytest.mark.slow
def test_cli_trains_and_writes_its_run_files(tiny_run):
  rc, _, _, out_dir = tiny_run
  assert rc == 0
  assert sorted(os.listdir(out_dir)) == sorted([
      "config.gin", "config_full.gin", loop.LOG_FILE, "train",
      vqgan_io.CONFIG_FILE, vqgan_io.METADATA_FILE, vqgan_io.VARIABLES_DIR])
  operative = open(os.path.join(out_dir, "config.gin")).read()
  assert "TRAIN_STEPS = 40" in operative
  log = open(os.path.join(out_dir, loop.LOG_FILE)).read()
  assert "saved the VQGAN at step 20" in log
  assert "1 of 9 image files could not be decoded" in log
  # Atomic saves leave no staging or set-aside folders behind.
  assert os.listdir(os.path.dirname(out_dir)) == ["vq"]


@pytest.mark.slow
def test_training_reduces_l1_and_saves_a_loadable_vqgan(tiny_run):
  _, config, image_dir, out_dir = tiny_run
  scalars = train_metrics.read_scalars(os.path.join(out_dir, "train"))
  assert [s for s, _ in scalars["l1"]] == [10, 20, 30, 40]
  first_l1 = scalars["l1"][0][1]
  metadata = vqgan_io.load_metadata(out_dir)
  result = metadata["final_metrics"]
  assert metadata["step"] == 40
  assert result["l1"] < 0.6 * first_l1, (first_l1, result)
  assert result["skipped_images"] == 1 and result["num_images"] == 9
  assert 0 < result["codes_used"] <= 1 and result["perplexity"] >= 1
  loaded_config, variables = vqgan_io.load_vqgan(out_dir,
                                                 expected_num_codes=16)
  assert loaded_config == config
  pixels = images.ImageFolder(image_dir, 16).first_images(8)
  again = loop.evaluate_reconstruction(config, variables, pixels, 4)
  assert again["l1"] == pytest.approx(result["l1"], rel=1e-4)


@pytest.mark.slow
def test_adversarial_step_uses_the_adaptive_weight():
  config = get_config("demo", **TINY)
  optimizer = optax.adam(1e-3)
  disc = disc_lib.PatchDiscriminator(8, 1)
  builder = loop.steps_lib.StepBuilder(
      config, optimizer, disc=disc, disc_optimizer=optimizer,
      adversarial_weight=0.8)
  variables = vqgan_model.init_variables(config, jax.random.PRNGKey(0))
  state = loop.steps_lib.initial_state(
      config, variables, optimizer, disc=disc, disc_optimizer=optimizer,
      disc_seed=1)
  pixels = jax.random.uniform(jax.random.PRNGKey(2), (2, 16, 16, 3), minval=-1)
  rng = jax.random.PRNGKey(3)
  new_state, metrics = jax.jit(builder.adversarial_step)(state, pixels, rng,
                                                         None)
  # The weight from separate gradients of the two terms at the last layer.
  model = vqgan_model.VQGAN(config)

  def terms(params):
    out, _ = model.apply({"params": params, **state.model_state}, pixels,
                         train=True, mutable=["vq_ema"],
                         rngs={"gumbel": jax.random.split(rng, 3)[0],
                               "dropout": jax.random.split(rng, 3)[1]})
    logits, _ = disc.apply({"params": state.disc_params,
                            "batch_stats": state.disc_stats},
                           out.reconstruction, train=True,
                           mutable=["batch_stats"])
    return losses.l1_loss(pixels, out.reconstruction), -jnp.mean(logits)

  g_rec, g_adv = jax.jit(lambda p: (jax.grad(lambda q: terms(q)[0])(p),
                                     jax.grad(lambda q: terms(q)[1])(p)))(
                                         state.params)
  last = lambda g: g["decoder"]["conv_out"]["kernel"]
  want = 0.8 * np.linalg.norm(last(g_rec)) / (
      np.linalg.norm(last(g_adv)) + 1e-4)
  assert float(metrics["d_weight"]) == pytest.approx(want, rel=1e-3)
  assert np.isfinite(float(metrics["d_loss"]))
  assert int(new_state.step) == 1
  # The discriminator took its own step (its last bias may rest: the hinge's
  # bias gradient is 0 while every logit lies in (-1, 1)).
  for name in ("conv_0", "conv_1", "logits"):
    assert jnp.any(state.disc_params[name]["kernel"]
                   != new_state.disc_params[name]["kernel"]), name


# ---- the CLI ----------------------------------------------------------------------
@pytest.fixture
def clean_cli():
  _clean_gin_and_logging()
  yield
  _clean_gin_and_logging()


def test_cli_refuses_bad_flags_and_empty_folders(tmp_path, clean_cli, capsys):
  del clean_cli
  empty = tmp_path / "empty"
  empty.mkdir()
  base = ["--gin_file=vq/demo.gin", f"--gin.VQ_DIR='{tmp_path / 'vq'}'"]
  assert train_vq.main(base + ["--gin.TRAIN_STEP=3",
                               f"--gin.IMAGE_DIR='{empty}'"]) == 2
  assert "did you mean TRAIN_STEPS" in capsys.readouterr().err
  assert train_vq.main(base + [f"--gin.IMAGE_DIR='{empty}'"]) == 2
  assert str(empty) in capsys.readouterr().err
