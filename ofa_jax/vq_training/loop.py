"""`train_vqgan`: train a VQGAN tokenizer on a folder of images, linearly.

Why a loop of its own (not `ofa_jax.trainer`): a tokenizer has no tasks, no
vocabulary and no sequence features, and its GAN phase alternates two models
with two optimizers. The loop is a straight sequence: read the folder, build
the state (codebook started at data), compile the step (`steps.py`), run a
fixed number of steps, log, save.

Adam (taming's betas 0.5, 0.9 by default) with a linear warmup and a cosine
decay to zero over `steps`, for the VQGAN and (from `adversarial_start` on)
the discriminator.

Every `log_every` steps the mean L1, PSNR, quantizer loss and perplexity of the
window, and the fraction of codes used in it, go to the log and to event files
in `<out_dir>/train` (clu's writer). A non-finite loss stops the run before
anything is saved. The checkpoint (`save_vqgan`: atomic, so a crash leaves the
previous one) is written every `checkpoint_every` steps and at the end;
`load_vqgan(out_dir)` reads it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ofa_jax import run_dir
from ofa_jax import train_metrics
from ofa_jax.model.vqgan import io as vqgan_io
from ofa_jax.model.vqgan import model as vqgan_model
from ofa_jax.model.vqgan.config import VQGANConfig
from ofa_jax.model.vqgan.model import VQGAN
from ofa_jax.vq_training import codebook
from ofa_jax.vq_training import discriminator as disc_lib
from ofa_jax.vq_training import images as images_lib
from ofa_jax.vq_training import losses
from ofa_jax.vq_training import perceptual as perceptual_lib
from ofa_jax.vq_training import steps as steps_lib

# The full log of `python -m ofa_jax.train_vq`, in the output directory.
LOG_FILE = "train_vq.log"


def _optimizer(learning_rate: float, steps: int, warmup_steps: int,
               b1: float, b2: float) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(steps, warmup_steps + 1), end_value=0.0)
  return optax.adam(schedule, b1=b1, b2=b2)


class _WindowLog:
  """Per-step metrics kept on device until a window is written.

  Code histograms are summed on device, so the fraction of codes used over
  the window costs one [n_embed] fetch per window.
  """

  def __init__(self, writer: Any, steps: int):
    self.writer = writer
    self.steps = steps
    self._pending: list[dict[str, Any]] = []
    self._counts = None
    self._t0 = time.time()
    self._timed_from = 0
    self.last: dict[str, float] = {}

  def restart_clock(self) -> None:
    self._t0 = time.time()
    self._timed_from = len(self._pending)

  def add(self, metrics: dict[str, Any]) -> None:
    counts = metrics.pop("code_counts")
    self._counts = counts if self._counts is None else self._counts + counts
    self._pending.append(metrics)

  def flush(self, step: int) -> dict[str, float]:
    if not self._pending:
      return self.last
    fetched, counts = jax.device_get((self._pending, self._counts))
    for i, m in enumerate(fetched):
      if not np.isfinite(m["loss"]):
        raise train_metrics.NonFiniteLossError(
            f"non-finite VQGAN loss {float(m['loss'])} at step "
            f"{step - len(fetched) + i + 1}: stopping before saving")
    scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    scalars["codes_used"] = float(np.mean(counts > 0))
    scalars["window_perplexity"] = float(
        losses.perplexity_of_counts(jnp.asarray(counts)))
    elapsed = max(time.time() - self._t0, 1e-9)
    scalars["steps_per_sec"] = (len(fetched) - self._timed_from) / elapsed
    self.writer.write_scalars(step, scalars)
    self.writer.flush()
    logging.info(
        "vq step %d/%d: l1 %.4f, psnr %.2f dB, quant %.4g, perplexity %.1f, "
        "codes used %.1f%% (%.2f steps/s)", step, self.steps, scalars["l1"],
        scalars["psnr"], scalars["quant_loss"], scalars["perplexity"],
        100 * scalars["codes_used"], scalars["steps_per_sec"])
    self._pending, self._counts = [], None
    self._t0, self._timed_from = time.time(), 0
    self.last = scalars
    return scalars


def evaluate_reconstruction(config: VQGANConfig, variables: Any,
                            pixels_uint8: np.ndarray, batch_size: int
                            ) -> dict[str, float]:
  """L1, PSNR, perplexity and codes used of deterministic reconstructions.

  `pixels_uint8`: [N, R, R, 3]. Codes are the model's eval-mode codes (what a
  task tokenizing images with this VQGAN would see).
  """
  reconstructions, codes = reconstruct(config, variables, pixels_uint8,
                                       batch_size)
  x = images_lib.to_model_pixels(pixels_uint8)
  counts = np.bincount(codes.ravel(), minlength=config.n_embed)
  return {
      "l1": float(losses.l1_loss(jnp.asarray(x), jnp.asarray(reconstructions))),
      "psnr": float(losses.psnr(jnp.asarray(x), jnp.asarray(reconstructions))),
      "perplexity": float(losses.perplexity_of_counts(jnp.asarray(counts))),
      "codes_used": float(np.mean(counts > 0)),
  }


def reconstruct(config: VQGANConfig, variables: Any, pixels_uint8: np.ndarray,
                batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(reconstructions float32 [N, R, R, 3] in model range, codes [N, h, w])."""
  model = VQGAN(config)

  @jax.jit
  def run(x):
    out = model.apply(variables, x, train=False)
    return out.reconstruction, out.codes

  recs, codes = [], []
  for start in range(0, len(pixels_uint8), batch_size):
    chunk = pixels_uint8[start:start + batch_size]
    # The last batch is padded: one compiled shape for all.
    padded = np.concatenate([chunk, np.zeros(
        (batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
    rec, code = jax.device_get(run(jnp.asarray(
        images_lib.to_model_pixels(padded))))
    recs.append(rec[:len(chunk)])
    codes.append(code[:len(chunk)])
  return np.concatenate(recs), np.concatenate(codes)


def _run_files() -> tuple[str, ...]:
  """What a run writes into `out_dir` next to the checkpoint."""
  return (run_dir.TRAIN_LOGDIR, run_dir.CONFIG_GIN, run_dir.CONFIG_FULL_GIN,
          LOG_FILE)


def check_out_dir(out_dir: str) -> None:
  """Refuses an `out_dir` holding anything but a VQGAN and this loop's files
  (a mistyped path must not mix a run into someone's folder)."""
  if not os.path.exists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise ValueError(f"VQGAN output directory {out_dir!r} is a file")
  owned = set(_run_files()) | {vqgan_io.CONFIG_FILE, vqgan_io.METADATA_FILE,
                               vqgan_io.VARIABLES_DIR}
  foreign = sorted(set(os.listdir(out_dir)) - owned)
  if foreign:
    raise ValueError(f"VQGAN output directory {out_dir!r} holds other files "
                     f"({', '.join(foreign[:5])}); give an empty or new "
                     "directory, or one written by an earlier VQGAN run")


def save_with_run_files(out_dir: str, config: VQGANConfig, variables: Any,
                        metadata: dict[str, Any]) -> None:
  """`save_vqgan` into a directory that also holds the run's logs.

  Why: `save_vqgan` replaces the whole directory (atomically) and refuses one
  without a VQGAN, so the run's own files (`_run_files`: event files, log,
  gin config) are moved to a sibling `<out_dir>.run-<tag>` for the save and
  back after it (open files follow a rename). The checkpoint stays atomic; a
  crash during a save leaves the logs in that sibling, never a half
  checkpoint.
  """
  out_dir = os.path.abspath(out_dir)
  extras = ([e for e in _run_files() if os.path.exists(os.path.join(out_dir, e))]
            if os.path.isdir(out_dir) else [])
  if not extras:
    vqgan_io.save_vqgan(out_dir, config, variables, metadata=metadata)
    return
  aside = f"{out_dir}.run-{uuid.uuid4().hex[:8]}"
  os.makedirs(aside)
  for entry in extras:
    os.rename(os.path.join(out_dir, entry), os.path.join(aside, entry))
  try:
    if not os.listdir(out_dir):
      os.rmdir(out_dir)  # a fresh run: save_vqgan creates it
    vqgan_io.save_vqgan(out_dir, config, variables, metadata=metadata)
  finally:
    os.makedirs(out_dir, exist_ok=True)
    for entry in extras:
      if not os.path.exists(os.path.join(out_dir, entry)):
        os.rename(os.path.join(aside, entry), os.path.join(out_dir, entry))
    if not os.listdir(aside):
      os.rmdir(aside)


def _save(out_dir: str, config: VQGANConfig, state: steps_lib.VQTrainState,
          metadata: dict[str, Any]) -> None:
  variables = jax.device_get(state.model_variables())
  save_with_run_files(out_dir, config, variables, metadata)
  logging.info("saved the VQGAN at step %d to %s", metadata["step"], out_dir)


def train_vqgan(config: VQGANConfig, image_dir: str, out_dir: str, *,
                steps: int, batch_size: int, learning_rate: float,
                seed: int = 0, adversarial_weight: float = 0.0,
                adversarial_start: int = 0,
                perceptual_weights: Optional[str] = None,
                perceptual_weight: float = 1.0, log_every: int = 50,
                warmup_steps: Optional[int] = None,
                checkpoint_every: int = 0, random_flip: bool = False,
                adam_b1: float = 0.5, adam_b2: float = 0.9,
                discriminator_layers: int = 3,
                discriminator_channels: int = 64,
                eval_images: int = 64, codebook_from_data: bool = True,
                restart_dead_after: int = 0,
                l2_weight: float = 0.0) -> dict[str, Any]:
  """Trains a VQGAN on the images under `image_dir`; saves it to `out_dir`.

  Args:
    config: the architecture (`ofa_jax.model.vqgan.config.get_config`);
      images are resized to `config.resolution`.
    image_dir: a folder of png/jpg/jpeg/bmp files (searched recursively).
    out_dir: where the checkpoint (`load_vqgan(out_dir)`) and the event files
      (`<out_dir>/train`) go.
    steps, batch_size, learning_rate, seed: the run; `warmup_steps` of linear
      warmup (default: a tenth of the steps, at most 1000), then cosine decay.
    adversarial_weight: taming's disc_weight; 0 (default) trains no
      discriminator. `adversarial_start`: the step both GAN terms start at.
    perceptual_weights: weight file(s) of the perceptual distance (see
      `perceptual.load_perceptual_weights`); None leaves the term out.
    log_every: steps per logged window; `checkpoint_every`: steps between
      intermediate saves (0: the final save only).
    eval_images: the first N decodable images (sorted order) on which the
      final metrics are measured in eval mode.
    codebook_from_data: start a "vq" / "ema" codebook at encoder features of
      training images (`codebook.init_codebook_from_data`).
    restart_dead_after: "ema" only: a code unused for this many steps moves
      to a feature of the current batch (`codebook.restart_dead_codes`);
      0 never restarts.
    l2_weight: weight of an extra mean squared error term (L1 stays on).
    random_flip: mirror each training image with probability 1/2.
    adam_b1, adam_b2: Adam's betas (taming's 0.5, 0.9 by default).
    discriminator_layers, discriminator_channels: the PatchGAN's depth and
      first width (taming: 3, 64).

  Returns:
    The final metrics: `l1`, `psnr`, `perplexity`, `codes_used` (fraction of
    the codebook) of the eval images' deterministic reconstructions, plus
    `train_l1` / `train_codes_used` of the last window, `steps`,
    `num_images` (files found), `skipped_images` (files that did not decode,
    among those the run read) and `train_seconds` (compilation included).
  """
  for name, value in (("steps", steps), ("batch_size", batch_size),
                      ("log_every", log_every), ("eval_images", eval_images)):
    if value <= 0:
      raise ValueError(f"train_vqgan: {name} must be positive, got {value}")
  if learning_rate <= 0:
    raise ValueError(f"train_vqgan: learning_rate must be positive, got "
                     f"{learning_rate}")
  if adversarial_weight < 0 or adversarial_start < 0 or checkpoint_every < 0:
    raise ValueError("train_vqgan: adversarial_weight, adversarial_start and "
                     "checkpoint_every must be >= 0")
  check_out_dir(out_dir)
  adversarial = adversarial_weight > 0
  if adversarial:
    disc_lib.patch_grid(config.resolution, discriminator_layers)
  folder = images_lib.ImageFolder(image_dir, config.resolution,
                                  random_flip=random_flip)
  logging.info("training a VQGAN (%s quantizer, %d codes, %d px) on %d image "
               "files under %s", config.quantizer, config.n_embed,
               config.resolution, len(folder.files), image_dir)
  eval_pixels = folder.first_images(min(eval_images, len(folder.files)))
  p_weights = (perceptual_lib.load_perceptual_weights(perceptual_weights)
               if perceptual_weights else None)

  warmup = (min(1000, max(1, steps // 10)) if warmup_steps is None
            else warmup_steps)
  optimizer = _optimizer(learning_rate, steps, warmup, adam_b1, adam_b2)
  disc = disc_optimizer = None
  if adversarial:
    disc = disc_lib.PatchDiscriminator(discriminator_channels,
                                       discriminator_layers)
    disc_optimizer = _optimizer(learning_rate, steps, warmup, adam_b1, adam_b2)
  builder = steps_lib.StepBuilder(
      config, optimizer, disc=disc, disc_optimizer=disc_optimizer,
      perceptual_weight=perceptual_weight,
      adversarial_weight=adversarial_weight, restart_after=restart_dead_after,
      l2_weight=l2_weight)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = vqgan_model.init_variables(config, init_rng)
  if adversarial:
    steps_lib.find_last_layer(variables["params"])  # refuse before training
  batches = folder.batches(batch_size, seed=seed)
  if codebook_from_data:
    positions = config.grid_side(config.resolution) ** 2
    batches_needed = -(-config.n_embed // (positions * batch_size))
    pixels = np.concatenate([next(batches) for _ in range(batches_needed)])
    variables = codebook.init_codebook_from_data(
        config, variables, jnp.asarray(pixels), jax.random.fold_in(init_rng, 1))
  state = steps_lib.initial_state(config, variables, optimizer, disc=disc,
                                  disc_optimizer=disc_optimizer,
                                  disc_seed=seed)
  plain = jax.jit(builder.plain_step, donate_argnums=0)
  adv = (jax.jit(builder.adversarial_step, donate_argnums=0) if adversarial
         else None)

  writer = train_metrics.create_writer(
      os.path.join(out_dir, run_dir.TRAIN_LOGDIR))
  window = _WindowLog(writer, steps)
  metadata = {"image_dir": os.path.abspath(image_dir),
              "num_images": len(folder.files), "batch_size": batch_size,
              "learning_rate": learning_rate, "seed": seed}
  t_start = time.time()
  try:
    for step in range(steps):
      pixels = jnp.asarray(next(batches))
      step_fn = adv if adversarial and step >= adversarial_start else plain
      state, metrics = step_fn(state, pixels,
                               jax.random.fold_in(step_rng, step), p_weights)
      window.add(metrics)
      if step == 0:
        jax.block_until_ready(metrics)
        logging.info("first VQGAN step (compilation included) took %.1fs",
                     time.time() - t_start)
        window.restart_clock()  # keep compilation out of the step rate
      done = step + 1
      if done % log_every == 0 or done == steps:
        window.flush(done)
      if checkpoint_every and done % checkpoint_every == 0 and done < steps:
        window.flush(done)
        _save(out_dir, config, state, {**metadata, "step": done})
  finally:
    batches.close()
    writer.close()
  train_seconds = time.time() - t_start

  variables = jax.device_get(state.model_variables())
  result = evaluate_reconstruction(config, variables, eval_pixels, batch_size)
  result.update(
      train_l1=window.last.get("l1"),
      train_codes_used=window.last.get("codes_used"), steps=steps,
      num_images=len(folder.files), skipped_images=len(folder.skipped),
      train_seconds=train_seconds)
  logging.info("VQGAN trained in %.0fs: eval l1 %.4f, psnr %.2f dB, codes "
               "used %.1f%% (perplexity %.1f); %s", train_seconds,
               result["l1"], result["psnr"], 100 * result["codes_used"],
               result["perplexity"],
               images_lib.describe_skips(folder.skipped, len(folder.files)))
  _save(out_dir, config, state, {**metadata, "step": steps,
                                 "final_metrics": result})
  return result
