"""AdamW with OFA's learning-rate schedule and gradient clipping, as optax.

Why these choices: OFA / OFASys train with fairseq's Adam (decoupled weight decay,
i.e. AdamW, applied to *every* parameter including biases and LayerNorm), betas
(0.9, 0.999), eps 1e-8, weight decay 0.01, global-norm clipping at 1.0 and the
``ofa_polynomial_decay`` schedule: linear warm-up from 0 over a fraction of the run
(6% by default), then polynomial decay (power 1 = linear) to ``end_learning_rate``.
Matching these keeps fine-tuning recipes of OFA transferable.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import optax


def ofa_polynomial_decay(*, learning_rate: float, total_steps: int,
                         warmup_steps: Optional[int] = None,
                         warmup_ratio: float = 0.06,
                         end_learning_rate: float = 0.0,
                         power: float = 1.0) -> optax.Schedule:
  """lr(t): t/warmup * lr during warm-up, then polynomial decay to the end value.

  `warmup_steps` wins over `warmup_ratio` (OFA's `warmup_ratio` is a fraction of
  `total_steps`). Beyond `total_steps` the rate stays at `end_learning_rate`.
  """
  if total_steps <= 0:
    raise ValueError(f"ofa_polynomial_decay: total_steps must be > 0, got "
                     f"{total_steps}")
  if warmup_steps is None:
    warmup_steps = int(round(warmup_ratio * total_steps))
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"ofa_polynomial_decay: warmup_steps={warmup_steps} must be in "
                     f"[0, total_steps={total_steps}]")

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warm = learning_rate * t / max(warmup_steps, 1)
    span = max(total_steps - warmup_steps, 1)
    frac = jnp.clip((t - warmup_steps) / span, 0.0, 1.0)
    decay = (learning_rate - end_learning_rate) * (1.0 - frac) ** power
    decay = decay + end_learning_rate
    return jnp.where(t < warmup_steps, warm, decay)

  return schedule


def adamw(*, learning_rate: float = 1e-4, total_steps: int,
          warmup_steps: Optional[int] = None, warmup_ratio: float = 0.06,
          end_learning_rate: float = 0.0, power: float = 1.0,
          b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.01,
          clip_norm: Optional[float] = 1.0) -> optax.GradientTransformation:
  """The OFA optimizer: clip by global norm, then AdamW on the OFA schedule.

  `clip_norm=None` or 0 disables clipping.
  """
  schedule = ofa_polynomial_decay(
      learning_rate=learning_rate, total_steps=total_steps,
      warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
      end_learning_rate=end_learning_rate, power=power)
  parts = []
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                           weight_decay=weight_decay))
  return optax.chain(*parts)
