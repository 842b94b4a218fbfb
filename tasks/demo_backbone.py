"""Pretraining of the demo's image backbone, the way OFA starts from ImageNet.

    python -m tasks.demo_backbone --out_dir=demo_out/backbone [--steps=300]

Why: OFA never trains its ResNet from scratch; it starts from an ImageNet-
pretrained ResNet and trains the transformer on top. Trained from scratch inside
the generalist, the demo's ResNet does not learn in a CPU budget: its 4x4 patch
features of a mostly blank 64 px canvas start almost identical across images
(between-image spread ~5 % of the feature spread after the patch LayerNorm), the
decoder fits the answer prior within the first steps and the gradient that
reaches the backbone fades (measured: the eval loss with the images of the batch
rolled by one stays equal to the real one to 4 decimals for 100 steps). With a
backbone pretrained here for ~30 s, the same single-task run reaches 95 % on
classification in 100 steps.

The pretraining task is the demo world's "ImageNet": multi-label tagging of the
shapes, colours and sizes present in a scene, a linear head on the mean-pooled
ResNet features, sigmoid cross-entropy. Its scenes come from their own random
stream, disjoint from the train / validation / test scenes of the demo tasks.
The output is a partial checkpoint in the converter's layout
(`out_dir/checkpoint` with `params` and `batch_stats` of
`encoder/images/embed_images` only), loaded by the trainer with
`INITIAL_CHECKPOINT_FALLBACK_TO_SCRATCH = True`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from ofa_jax import checkpoint_conversion
from ofa_jax.model import config as config_lib
from ofa_jax.model.config import OFAConfig
from ofa_jax.model.resnet import ResNet
from tasks import demo_world as world

TAGS: tuple[str, ...] = (tuple(world.SHAPES) + tuple(world.COLOURS)
                         + tuple(world.SIZES))
# Random stream of the pretraining scenes (the task splits use other salts).
PRETRAIN_SALT = 3_000_017
BACKBONE_SCOPE = ("encoder", "images", "embed_images")


class TaggingNet(nn.Module):
  """The generalist's ResNet (same module, same parameter names) + a tag head."""

  config: OFAConfig

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    feats = ResNet(self.config, name="embed_images")(images, train)
    pooled = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(len(TAGS), name="tag_head")(pooled)


def scene_batch(rng: np.random.Generator, n: int, *, canvas: int,
                image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """n scenes as the image modality feeds them (mean/std 0.5) and their tags."""
  images, tags = [], []
  for _ in range(n):
    scene = world.make_scene(rng, canvas)
    pixels = world.render(scene)
    if canvas != image_size:
      pixels = np.asarray(Image.fromarray(pixels).resize(
          (image_size, image_size), Image.BICUBIC))
    images.append(pixels.astype(np.float32) / 127.5 - 1.0)
    y = np.zeros(len(TAGS), np.float32)
    for o in scene.objects:
      for attribute in (o.shape, o.colour, o.size):
        y[TAGS.index(attribute)] = 1.0
    tags.append(y)
  return np.stack(images), np.stack(tags)


def pretrain_backbone(config: OFAConfig, out_dir: str, *, steps: int = 300,
                      batch_size: int = 64, learning_rate: float = 1e-3,
                      seed: int = 0, canvas: int = 64, image_size: int = 64,
                      eval_examples: int = 256) -> dict[str, Any]:
  """Trains the tagging net, writes the backbone checkpoint; returns its figures.

  The figures (`tag_accuracy`: per-tag accuracy, `exact_set_accuracy`: all tags
  of a scene right) are measured on held-out scenes with running BatchNorm
  statistics, as the generalist will first use them.
  """
  if steps <= 0 or batch_size <= 0:
    raise ValueError(f"pretrain_backbone: steps ({steps}) and batch_size "
                     f"({batch_size}) must be positive")
  t_start = time.monotonic()
  rng = np.random.default_rng([seed, PRETRAIN_SALT])
  net = TaggingNet(config)
  x0, _ = scene_batch(rng, 2, canvas=canvas, image_size=image_size)
  variables = nn.meta.unbox(net.init(jax.random.key(seed), x0, False))
  params, stats = variables["params"], variables["batch_stats"]
  # Cosine decay: the last steps move little, so the running BatchNorm
  # statistics (momentum 0.1) describe the final weights.
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state, images, tags):
    def loss_fn(p):
      logits, updates = net.apply({"params": p, "batch_stats": stats}, images,
                                  True, mutable=["batch_stats"])
      loss = optax.sigmoid_binary_cross_entropy(logits, tags).mean()
      return loss, updates["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  loss = jnp.zeros(())
  for i in range(steps):
    images, tags = scene_batch(rng, batch_size, canvas=canvas,
                               image_size=image_size)
    params, stats, opt_state, loss = step(params, stats, opt_state, images, tags)
    if i % 100 == 0:
      logging.info("backbone pretraining step %d/%d loss %.4f", i, steps,
                   float(loss))

  held_out = np.random.default_rng([seed, PRETRAIN_SALT, 1])
  images, tags = scene_batch(held_out, eval_examples, canvas=canvas,
                             image_size=image_size)
  logits = np.asarray(jax.jit(lambda p, s, x: net.apply(
      {"params": p, "batch_stats": s}, x, False))(params, stats, images))
  right = (logits > 0) == (tags > 0.5)
  figures = {
      "steps": steps, "batch_size": batch_size, "final_loss": float(loss),
      "tag_accuracy": float(right.mean()),
      "exact_set_accuracy": float(right.all(axis=1).mean()),
      "eval_examples": eval_examples, "seconds": round(time.monotonic() - t_start, 1),
      "tags": list(TAGS), "scope": "/".join(BACKBONE_SCOPE),
  }
  scoped = lambda tree: {BACKBONE_SCOPE[0]: {BACKBONE_SCOPE[1]: {  # noqa: E731
      BACKBONE_SCOPE[2]: jax.device_get(tree)}}}
  checkpoint_conversion.save_converted(
      {"params": scoped(params["embed_images"]),
       "batch_stats": scoped(stats["embed_images"])},
      out_dir, metadata={"source": "tasks.demo_backbone", **figures}, force=True)
  logging.info("backbone pretraining: %s", json.dumps(
      {k: v for k, v in figures.items() if k != "tags"}))
  return figures


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m tasks.demo_backbone",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out_dir", required=True)
  p.add_argument("--preset", default="demo", help="OFA preset of the ResNet")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--learning_rate", type=float, default=1e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--canvas", type=int, default=64)
  p.add_argument("--image_size", type=int, default=64)
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO)
  figures = pretrain_backbone(
      config_lib.get_config(args.preset), args.out_dir, steps=args.steps,
      batch_size=args.batch_size, learning_rate=args.learning_rate,
      seed=args.seed, canvas=args.canvas, image_size=args.image_size)
  print(json.dumps(figures, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
