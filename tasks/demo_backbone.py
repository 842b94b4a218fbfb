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

The pretraining task is the demo world's "ImageNet" plus a detection-style dense
objective, as detection backbones are pretrained: (1) multi-label tagging of the
shapes, colours and sizes present in a scene (a linear head on the mean-pooled
features, sigmoid cross-entropy); (2) per patch (each cell of the stride-16 grid
the encoder sees as one token), the colour, shape and size of the object whose box
centre falls in the cell, or "none" (softmax heads), and that object's box
relative to the cell (L1, in cell units), as CenterNet/YOLO heads do; (3) per
patch, the colours covering it (sigmoid). Why dense: tags of a pooled feature
leave each patch free to forget where its object is, and grounding, detection
and matching read objects patch by patch. Its scenes come from their own random
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
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from ofa_jax import checkpoint_conversion
from ofa_jax import log_setup
from ofa_jax.model import config as config_lib
from ofa_jax.model.config import OFAConfig
from ofa_jax.model.resnet import ResNet
from tasks import demo_world as world

TAGS: tuple[str, ...] = (tuple(world.SHAPES) + tuple(world.COLOURS)
                         + tuple(world.SIZES))
# Random stream of the pretraining scenes (the task splits use other salts).
PRETRAIN_SALT = 3_000_017
BACKBONE_SCOPE = ("encoder", "images", "embed_images")


COLOURS: tuple[str, ...] = tuple(world.COLOURS)
# Per-cell class heads: (name, classes); the last class of each is "none".
CELL_HEADS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("colour", COLOURS + ("none",)),
    ("shape", tuple(world.SHAPES) + ("none",)),
    ("size", tuple(world.SIZES) + ("none",)),
)
# A cell counts as covered by a colour when at least this share of its pixels
# has that colour.
COVER_SHARE = 0.1


class SceneNet(nn.Module):
  """The generalist's ResNet (same module, same parameter names) + scene heads.

  Returns (tag logits [B, tags], per-cell outputs [B, h, w, ...] in a dict).
  """

  config: OFAConfig

  @nn.compact
  def __call__(self, images: jax.Array, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    feats = ResNet(self.config, name="embed_images")(images, train)
    feats = feats.astype(jnp.float32)
    pooled = jnp.mean(feats, axis=(1, 2))
    cells = {name: nn.Dense(len(classes), name=f"cell_{name}")(feats)
             for name, classes in CELL_HEADS}
    cells["box"] = nn.Dense(4, name="cell_box")(feats)
    cells["cover"] = nn.Dense(len(COLOURS), name="cell_cover")(feats)
    return nn.Dense(len(TAGS), name="tag_head")(pooled), cells


def grid_side(image_size: int) -> int:
  """Cells on a side of the backbone's output grid (stride 16, OFA's ResNet)."""
  return -(-image_size // 16)


def scene_targets(scene: world.Scene, pixels: np.ndarray, grid: int
                  ) -> dict[str, np.ndarray]:
  """Tags and per-cell targets of one scene (pixels: the rendered canvas)."""
  canvas = scene.canvas
  cell = canvas / grid
  tags = np.zeros(len(TAGS), np.float32)
  out = {name: np.full((grid, grid), len(classes) - 1, np.int32)
         for name, classes in CELL_HEADS}
  box = np.zeros((grid, grid, 4), np.float32)
  has_box = np.zeros((grid, grid), np.float32)
  for o in scene.objects:
    for attribute in (o.shape, o.colour, o.size):
      tags[TAGS.index(attribute)] = 1.0
    x0, y0, x1, y1 = o.box
    col = min(int((x0 + x1) / 2 / cell), grid - 1)
    row = min(int((y0 + y1) / 2 / cell), grid - 1)
    out["colour"][row, col] = COLOURS.index(o.colour)
    out["shape"][row, col] = world.SHAPES.index(o.shape)
    out["size"][row, col] = world.SIZES.index(o.size)
    box[row, col] = (x0 / cell - col, y0 / cell - row, x1 / cell - col,
                     y1 / cell - row)
    has_box[row, col] = 1.0
  # Pixels of each colour, summed per cell (one pass: this runs for every
  # pretraining scene).
  rgb = np.array([65536, 256, 1], np.uint32)  # one integer per RGB colour
  palette = np.array([world.COLOURS[c] for c in COLOURS], np.uint32) @ rgb
  hit = ((pixels.astype(np.uint32) @ rgb)[:, :, None] == palette).astype(np.int64)
  edges = np.linspace(0, canvas, grid + 1).round().astype(int)
  counts = np.add.reduceat(np.add.reduceat(hit, edges[:-1], axis=0),
                           edges[:-1], axis=1)  # [grid, grid, colours]
  sides = np.diff(edges)
  share = counts / (sides[:, None, None] * sides[None, :, None])
  cover = (share >= COVER_SHARE).astype(np.float32)
  return {"tags": tags, **out, "box": box, "has_box": has_box, "cover": cover}


def scene_batch(rng: np.random.Generator, n: int, *, canvas: int,
                image_size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """n scenes as the image modality feeds them (mean/std 0.5) and their targets."""
  images, targets = [], []
  grid = grid_side(image_size)
  for _ in range(n):
    scene = world.make_scene(rng, canvas)
    pixels = world.render(scene)
    targets.append(scene_targets(scene, pixels, grid))
    if canvas != image_size:
      pixels = np.asarray(Image.fromarray(pixels).resize(
          (image_size, image_size), Image.BICUBIC))
    images.append(pixels.astype(np.float32) / 127.5 - 1.0)
  return np.stack(images), {k: np.stack([t[k] for t in targets])
                            for k in targets[0]}


def scene_losses(tag_logits: jax.Array, cells: dict[str, jax.Array],
                 targets: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The pretraining losses, each a scalar mean."""
  losses = {"tags": optax.sigmoid_binary_cross_entropy(
      tag_logits, targets["tags"]).mean()}
  has = targets["has_box"]
  # 1-3 of the 16 cells hold an object centre: weigh them as much as the rest.
  weight = 1.0 + has * (has.size / jnp.maximum(has.sum(), 1.0) - 1.0)
  for name, _ in CELL_HEADS:
    losses[name] = (optax.softmax_cross_entropy_with_integer_labels(
        cells[name], targets[name]) * weight).mean()
  err = jnp.abs(cells["box"] - targets["box"]).sum(-1)
  losses["box"] = (err * has).sum() / jnp.maximum(has.sum(), 1.0)
  losses["cover"] = optax.sigmoid_binary_cross_entropy(
      cells["cover"], targets["cover"]).mean()
  return losses


def pretrain_backbone(config: OFAConfig, out_dir: str, *, steps: int = 300,
                      batch_size: int = 64, learning_rate: float = 1e-2,
                      seed: int = 0, canvas: int = 64, image_size: int = 64,
                      eval_examples: int = 256,
                      on_step: Optional[Callable[[int, int], None]] = None
                      ) -> dict[str, Any]:
  """Trains the scene net, writes the backbone checkpoint; returns its figures.

  `on_step(done, steps)` is called after every step (the demo's progress line).

  The figures (`tag_accuracy`: per-tag accuracy, `exact_set_accuracy`: all tags
  of a scene right, `object_cell_accuracy`: cells of an object centre with its
  colour, shape and size right, `box_error_px`: mean error of their box edges)
  are measured on held-out scenes with running BatchNorm statistics, as the
  generalist will first use them.
  """
  if steps <= 0 or batch_size <= 0:
    raise ValueError(f"pretrain_backbone: steps ({steps}) and batch_size "
                     f"({batch_size}) must be positive")
  t_start = time.monotonic()
  rng = np.random.default_rng([seed, PRETRAIN_SALT])
  net = SceneNet(config)
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
      (logits, cells), updates = net.apply(
          {"params": p, "batch_stats": stats}, images, True,
          mutable=["batch_stats"])
      loss = sum(scene_losses(logits, cells, tags).values())
      return loss, updates["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  loss = jnp.zeros(())
  for i in range(steps):
    images, tags = scene_batch(rng, batch_size, canvas=canvas,
                               image_size=image_size)
    params, stats, opt_state, loss = step(params, stats, opt_state, images, tags)
    if on_step is not None:
      on_step(i + 1, steps)
    if i % 100 == 0:
      logging.info("backbone pretraining step %d/%d loss %.4f", i, steps,
                   float(loss))

  held_out = np.random.default_rng([seed, PRETRAIN_SALT, 1])
  images, tags = scene_batch(held_out, eval_examples, canvas=canvas,
                             image_size=image_size)
  logits, cells = jax.device_get(jax.jit(lambda p, s, x: net.apply(
      {"params": p, "batch_stats": s}, x, False))(params, stats, images))
  right = (logits > 0) == (tags["tags"] > 0.5)
  has = tags["has_box"] > 0
  cell_right = np.ones(has.shape, bool)
  head_accuracy = {}
  for name, _ in CELL_HEADS:
    head_right = np.argmax(cells[name], -1) == tags[name]
    head_accuracy[name] = float(head_right[has].mean())
    cell_right &= head_right
  cell_px = canvas / grid_side(image_size)
  figures = {
      "steps": steps, "batch_size": batch_size, "final_loss": float(loss),
      "tag_accuracy": float(right.mean()),
      "exact_set_accuracy": float(right.all(axis=1).mean()),
      # Cells holding an object centre with colour, shape and size all right,
      # and the mean absolute error of their box edges in canvas pixels.
      "object_cell_accuracy": float(cell_right[has].mean()),
      "empty_cell_accuracy": float(cell_right[~has].mean()),
      "object_cell_head_accuracy": head_accuracy,
      "box_error_px": float(np.abs(cells["box"] - tags["box"])[has].mean()
                            * cell_px),
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
  p.add_argument("--learning_rate", type=float, default=1e-2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--canvas", type=int, default=64)
  p.add_argument("--image_size", type=int, default=64)
  argv = log_setup.configure(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  log_setup.log_to_file(os.path.join(args.out_dir, "backbone.log"))
  figures = pretrain_backbone(
      config_lib.get_config(args.preset), args.out_dir, steps=args.steps,
      batch_size=args.batch_size, learning_rate=args.learning_rate,
      seed=args.seed, canvas=args.canvas, image_size=args.image_size)
  print(json.dumps(figures, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
