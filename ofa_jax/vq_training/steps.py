"""The VQGAN's training state and its two jitted steps (plain and adversarial).

Why apart from the loop: the step is the one piece that runs under `jax.jit`;
keeping it a pure function of (state, pixels, rng, perceptual weights) makes it
testable on its own and keeps the loop free of tracing concerns.

Generator loss (pixels in [-1, 1]): L1 (+ l2_weight * MSE) (+ perceptual_weight
* LPIPS-style distance) + the quantizer's own term (+ in the adversarial step: taming's
adaptive weight * adversarial_weight * (-mean D(x_rec)), the adaptive weight
from the gradients of both terms at the decoder's last layer, obtained from
one forward pass and two VJPs). The adversarial step then updates the
PatchGAN discriminator with the hinge loss on the real batch and the fixed
reconstruction. "ema" codebooks update in `vq_ema` and, with
`restart_after > 0`, dead codes restart on batch features (`codebook.py`).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ofa_jax.model.vqgan.config import VQGANConfig
from ofa_jax.model.vqgan.model import VQGAN
from ofa_jax.vq_training import codebook
from ofa_jax.vq_training import discriminator as disc_lib
from ofa_jax.vq_training import losses
from ofa_jax.vq_training import perceptual as perceptual_lib

# Where the decoder's last layer is, for the adaptive weight (path fragments).
LAST_LAYER = ("decoder", "conv_out", "kernel")
# The module whose output is the quantizer's input (captured for restarts).
QUANTIZER_INPUT = "quant_conv"


@flax.struct.dataclass
class VQTrainState:
  step: jax.Array
  params: Any
  model_state: Any  # {"vq_ema": ...} or {}
  opt_state: Any
  code_last_used: jax.Array  # int32 [n_embed]: the step each code was chosen
  disc_params: Any  # None without the adversarial term
  disc_stats: Any
  disc_opt_state: Any

  def model_variables(self) -> dict[str, Any]:
    return {"params": self.params, **self.model_state}


def find_last_layer(params: Any) -> tuple[str, ...]:
  """The path of the decoder's output convolution kernel in `params` (the
  adaptive weight compares gradients there)."""
  return codebook.find_path(
      params, LAST_LAYER, "the adversarial term needs the decoder's last layer")


def _captures_quantizer_input(module: Any, method_name: str) -> bool:
  return module.name == QUANTIZER_INPUT and method_name == "__call__"


class StepBuilder:
  """The step functions of one run; jit them with the state donated."""

  def __init__(self, config: VQGANConfig,
               optimizer: optax.GradientTransformation, *,
               disc: Optional[disc_lib.PatchDiscriminator] = None,
               disc_optimizer: Optional[optax.GradientTransformation] = None,
               perceptual_weight: float = 1.0, adversarial_weight: float = 0.0,
               restart_after: int = 0, l2_weight: float = 0.0):
    self.config = config
    self.model = VQGAN(config)
    self.optimizer = optimizer
    self.disc = disc
    self.disc_optimizer = disc_optimizer
    self.perceptual_weight = perceptual_weight
    self.l2_weight = l2_weight
    self.adversarial_weight = adversarial_weight
    self.restart = restart_after > 0 and config.quantizer == "ema"
    self.restart_after = restart_after

  def _forward(self, params, state: VQTrainState, pixels, rng,
               perceptual_weights):
    """(reconstruction loss + quant_loss, aux) of the VQGAN in train mode."""
    gumbel_rng, dropout_rng, restart_rng = jax.random.split(rng, 3)
    mutable = list(state.model_state) + (["intermediates"] if self.restart
                                         else [])
    out, new_state = self.model.apply(
        {"params": params, **state.model_state}, pixels, train=True,
        mutable=mutable, rngs={"gumbel": gumbel_rng, "dropout": dropout_rng},
        capture_intermediates=(_captures_quantizer_input if self.restart
                               else False))
    new_state = dict(new_state)
    rec = out.reconstruction
    l1 = losses.l1_loss(pixels, rec)
    nll = l1
    if self.l2_weight:
      nll = nll + self.l2_weight * jnp.mean((pixels - rec) ** 2)
    counts = losses.code_counts(out.codes, self.config.n_embed)
    metrics = {"l1": l1, "psnr": losses.psnr(pixels, rec),
               "quant_loss": out.quant_loss, "perplexity": out.perplexity,
               "codebook_loss": out.codebook_loss,
               "commitment_loss": out.commitment_loss, "code_counts": counts}
    if perceptual_weights is not None:
      p_loss = jnp.mean(perceptual_lib.perceptual_distance(
          perceptual_weights, pixels, rec))
      nll = nll + self.perceptual_weight * p_loss
      metrics["perceptual_loss"] = p_loss
    last_used = state.code_last_used
    if self.restart:
      features = new_state.pop("intermediates")[QUANTIZER_INPUT]["__call__"][0]
      ema, last_used, restarted = codebook.restart_dead_codes(
          new_state[codebook.EMA_COLLECTION], features, counts, last_used,
          state.step, restart_rng, self.restart_after)
      new_state[codebook.EMA_COLLECTION] = ema
      metrics["codes_restarted"] = restarted
    return nll + out.quant_loss, (rec, new_state, last_used, metrics)

  def plain_step(self, state: VQTrainState, pixels, rng, perceptual_weights):
    grad_fn = jax.value_and_grad(self._forward, has_aux=True)
    (loss, (_, new_state, last_used, metrics)), grads = grad_fn(
        state.params, state, pixels, rng, perceptual_weights)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    metrics["loss"] = loss
    return state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        model_state=new_state, opt_state=opt_state,
        code_last_used=last_used), metrics

  def _disc_logits(self, disc_params, stats, pixels):
    logits, mutated = self.disc.apply(
        {"params": disc_params, "batch_stats": stats}, pixels, train=True,
        mutable=["batch_stats"])
    return logits, mutated["batch_stats"]

  def adversarial_step(self, state: VQTrainState, pixels, rng,
                       perceptual_weights):
    last_layer = find_last_layer(state.params)

    def both_losses(params):
      loss, (rec, new_state, last_used, metrics) = self._forward(
          params, state, pixels, rng, perceptual_weights)
      logits_fake, _ = self._disc_logits(state.disc_params, state.disc_stats,
                                         rec)
      g_loss = losses.generator_adversarial_loss(logits_fake)
      return (loss, g_loss), (rec, new_state, last_used, metrics)

    (loss, g_loss), vjp_fn, (rec, new_state, last_used, metrics) = jax.vjp(
        both_losses, state.params, has_aux=True)
    one, zero = jnp.ones_like(loss), jnp.zeros_like(loss)
    (grads_rec,) = vjp_fn((one, zero))
    (grads_adv,) = vjp_fn((zero, one))
    d_weight = self.adversarial_weight * losses.adaptive_weight(
        codebook.get_path(grads_rec, last_layer),
        codebook.get_path(grads_adv, last_layer))
    grads = jax.tree_util.tree_map(lambda r, a: r + d_weight * a, grads_rec,
                                   grads_adv)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    fake = jax.lax.stop_gradient(rec)

    def disc_loss(disc_params):
      logits_real, stats = self._disc_logits(disc_params, state.disc_stats,
                                             pixels)
      logits_fake, stats = self._disc_logits(disc_params, stats, fake)
      d_loss = losses.hinge_discriminator_loss(logits_real, logits_fake)
      return d_loss, (stats, jnp.mean(logits_real), jnp.mean(logits_fake))

    (d_loss, (stats, real_mean, fake_mean)), d_grads = jax.value_and_grad(
        disc_loss, has_aux=True)(state.disc_params)
    d_updates, disc_opt_state = self.disc_optimizer.update(
        d_grads, state.disc_opt_state, state.disc_params)
    metrics.update(loss=loss + d_weight * g_loss, g_loss=g_loss, d_loss=d_loss,
                   d_weight=d_weight, logits_real=real_mean,
                   logits_fake=fake_mean)
    return state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        model_state=new_state, opt_state=opt_state, code_last_used=last_used,
        disc_params=optax.apply_updates(state.disc_params, d_updates),
        disc_stats=stats, disc_opt_state=disc_opt_state), metrics


def initial_state(config: VQGANConfig, variables: dict[str, Any],
                  optimizer: optax.GradientTransformation, *,
                  disc: Optional[disc_lib.PatchDiscriminator] = None,
                  disc_optimizer: Optional[optax.GradientTransformation] = None,
                  disc_seed: int = 0) -> VQTrainState:
  """The state at step 0 from the model's `variables` ({"params", ...})."""
  variables = dict(variables)
  params = variables.pop("params")
  disc_params = disc_stats = disc_opt_state = None
  if disc is not None:
    disc_vars = disc_lib.init_discriminator(
        disc, (config.resolution, config.resolution, config.out_channels),
        disc_seed)
    disc_params, disc_stats = disc_vars["params"], disc_vars["batch_stats"]
    disc_opt_state = disc_optimizer.init(disc_params)
  return VQTrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
      opt_state=optimizer.init(params),
      code_last_used=jnp.zeros((config.n_embed,), jnp.int32),
      disc_params=disc_params, disc_stats=disc_stats,
      disc_opt_state=disc_opt_state)
