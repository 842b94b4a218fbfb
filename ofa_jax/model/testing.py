"""Helpers for tests of code that runs the network (here and in other modules).

Why: compiling `model.init` (hundreds of random draws) takes many seconds on a
loaded CPU, while tests only need *some* well-scaled weights. These helpers
draw them on the host with numpy from the abstract (eval_shape) variables, so
no init is compiled. Use `transformer.init_variables` where the real
initializers matter.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import features
from ofa_jax.modalities import image_features
from ofa_jax.model.config import OFAConfig, get_config
from ofa_jax.model.transformer import OFATransformer


def small_config(**overrides) -> OFAConfig:
  """A fast-to-compile config: the demo preset, a 300-token vocab, no dropout."""
  kwargs = dict(vocab_size=300, d_model=64, ffn_dim=128, attention_heads=4,
                encoder_layers=1, decoder_layers=2, dropout=0.0,
                max_source_positions=64, max_target_positions=64,
                code_image_size=32)
  kwargs.update(overrides)
  return get_config("demo", **kwargs)


def random_batch(config: OFAConfig, seed: int = 0, batch_size: int = 2,
                 input_length: int = 7, target_length: int = 6,
                 num_images: int = 1, image_size: int = 32,
                 num_input_pads: int = 2) -> dict[str, np.ndarray]:
  """Random tokens (pads at the end of the last example) and pixels."""
  rs = np.random.RandomState(seed)
  v = config.vocab_size
  enc = rs.randint(4, v, (batch_size, input_length)).astype(np.int32)
  if num_input_pads:
    enc[-1, -num_input_pads:] = config.pad_id
  dec = rs.randint(4, v, (batch_size, target_length)).astype(np.int32)
  dec[:, 0] = features.BOS_ID
  batch = {features.ENCODER_INPUT_TOKENS: enc,
           features.DECODER_INPUT_TOKENS: dec}
  if num_images:
    batch[image_features.IMAGES] = rs.randn(batch_size, num_images, image_size,
                                      image_size, 3).astype(np.float32)
    batch[image_features.IMAGE_MASK] = np.ones((batch_size, num_images), np.int32)
  return batch


def random_variables(config: OFAConfig, batch: Mapping[str, Any],
                     seed: int = 0, scale: float = 0.1) -> dict:
  """Unboxed variables with random values of the model's shapes.

  Vectors (LayerNorm / BatchNorm scales and biases, head scales) are drawn
  around 1 so every NormFormer LayerNorm and head scale matters; BatchNorm
  variances are positive.
  """
  model = OFATransformer(config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), batch, train=False))
  rs = np.random.RandomState(seed)

  def draw(s):
    x = rs.randn(*s.shape).astype(np.float32) * scale
    return jnp.asarray(x + 1.0 if len(s.shape) == 1 else x)

  variables = jax.tree.map(draw, nn.unbox(shapes))
  if "batch_stats" in variables:
    variables["batch_stats"] = jax.tree.map(lambda x: jnp.abs(x) + 0.5,
                                            variables["batch_stats"])
  return variables


def apply_fn(config: OFAConfig, train: bool = False,
             mutable: Optional[list[str]] = None):
  """A jitted `model.apply(variables, batch, rngs)` for the config."""
  model = OFATransformer(config)

  def fn(variables, batch, rng=None):
    rngs = {"dropout": rng} if rng is not None else {}
    return model.apply(variables, batch, train=train, rngs=rngs,
                       mutable=mutable or False)

  return jax.jit(fn)
