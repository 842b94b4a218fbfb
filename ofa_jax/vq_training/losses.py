"""The VQGAN's training terms, as pure functions of arrays.

Why apart from the loop: each term has a definition one can check by hand on a
tiny array (the tests do), independently of any network. The objective follows
taming-transformers' VQGAN (read as a specification):

  generator:      mean |x - x_rec| + perceptual_weight * mean LPIPS(x, x_rec)
                  + quant_loss (the quantizer's own term, from the model)
                  + adaptive_weight * adversarial_weight * (-mean D(x_rec))
  discriminator:  hinge: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))

Both adversarial terms are off before `adversarial_start` (taming's disc_start).
Pixels are in [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# taming's bounds on the adaptive weight.
ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4


def l1_loss(pixels: jax.Array, reconstruction: jax.Array) -> jax.Array:
  """Mean absolute error over every pixel and channel."""
  return jnp.mean(jnp.abs(pixels - reconstruction))


def psnr(pixels: jax.Array, reconstruction: jax.Array) -> jax.Array:
  """Mean per-image PSNR in dB, on [0, 1] intensities (reconstruction clipped).

  Pixels in [-1, 1] span 2, so the MSE on [0, 1] is a quarter of theirs:
  PSNR = 10 log10(1 / (mse / 4)). An exact reconstruction is capped by a floor
  on the MSE (1e-10, i.e. 100 dB) instead of being infinite.
  """
  rec = jnp.clip(reconstruction, -1.0, 1.0)
  mse = jnp.mean((pixels - rec) ** 2, axis=tuple(range(1, pixels.ndim))) / 4.0
  return jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10)))


def hinge_discriminator_loss(logits_real: jax.Array,
                             logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean relu(1 - real) + mean relu(1 + fake))."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real))
                + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_adversarial_loss(logits_fake: jax.Array) -> jax.Array:
  """-mean D(x_rec): the generator raises the discriminator's score of fakes."""
  return -jnp.mean(logits_fake)


def adaptive_weight(reconstruction_grad: jax.Array, adversarial_grad: jax.Array
                    ) -> jax.Array:
  """taming's balance of the GAN term against the reconstruction term.

  Both gradients are taken with respect to the decoder's last layer; the weight
  ||grad rec|| / (||grad adv|| + 1e-4), clipped to [0, 1e4], scales the GAN
  term so that its push on the output is as strong as the reconstruction's. No
  gradient flows through it.
  """
  weight = (jnp.linalg.norm(reconstruction_grad.ravel())
            / (jnp.linalg.norm(adversarial_grad.ravel()) + ADAPTIVE_WEIGHT_EPS))
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, ADAPTIVE_WEIGHT_MAX))


def code_counts(codes: jax.Array, num_codes: int) -> jax.Array:
  """int32 [num_codes]: how often each code occurs in `codes` (any shape)."""
  return jnp.bincount(codes.ravel(), length=num_codes).astype(jnp.int32)


def perplexity_of_counts(counts: jax.Array) -> jax.Array:
  """exp(entropy) of the code histogram: 1 when one code is used, K for K
  codes used equally often."""
  probs = counts / jnp.maximum(jnp.sum(counts), 1)
  return jnp.exp(-jnp.sum(probs * jnp.log(jnp.where(probs > 0, probs, 1.0))))
