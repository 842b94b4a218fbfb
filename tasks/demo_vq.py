"""The demo's image tokenizer: a small VQGAN trained on the demo world.

    python -m tasks.demo_vq --out_dir=demo_out [--gin.TRAIN_STEPS=N]

Why its own tokenizer: OFA generates images as codes of a VQGAN trained on
OpenImages; nothing can be downloaded here, and the demo world's flat shapes on
a light canvas are their own domain, which is what `python -m ofa_jax.train_vq`
is for. The demo uses it exactly as a user would: pictures are written as PNG
files (their own random draws of the 96 pictures), the VQGAN
is trained on that folder with `gin/vq/demo.gin` (a fixed number of steps), and
the generalist's `target_image` head loads the directory it writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tasks import demo_world as world

# Random stream of the tokenizer's pictures (the tasks and the backbone use others).
VQ_SALT = 4_000_037
GIN_FILE = "vq/demo.gin"


def write_pictures(directory: str, n: int, *, seed: int = 0, canvas: int = 64
                 ) -> int:
  """n rendered pictures as PNG files (kept when already there); returns n.

  Pictures (`demo_world.picture_scene`) are what the image tasks generate: a
  tokenizer trained on them draws every one back (gin/vq/demo.gin has the
  figures; mixing in free scenes halved that in the same budget).
  """
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng([seed, VQ_SALT])
  pictures = world.pictures()
  for i in range(n):
    path = os.path.join(directory, f"picture_{i:05d}.png")
    scene = world.picture_scene(*pictures[rng.integers(len(pictures))], canvas)
    if not os.path.exists(path):
      with open(path + ".tmp", "wb") as f:
        f.write(world.png_bytes(world.render(scene)))
      os.replace(path + ".tmp", path)
  return n


def train_tokenizer(out_dir: str, *, num_images: int = 2000, seed: int = 0,
                    canvas: int = 64, gin_bindings: Sequence[str] = (),
                    on_step: Optional[Callable[[int, int], None]] = None
                    ) -> dict[str, Any]:
  """Writes the pictures and trains `gin/vq/demo.gin` on them; returns figures.

  The VQGAN lands in `out_dir/vqgan` (`ofa_jax.model.vqgan.io.load_vqgan`).
  """
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from ofa_jax.vq_training import loop  # pylint: disable=g-import-not-at-top
  images = os.path.join(out_dir, "vq_images")
  vq_dir = os.path.join(out_dir, "vqgan")
  write_pictures(images, num_images, seed=seed, canvas=canvas)
  bindings = [f"IMAGE_DIR = {images!r}", f"VQ_DIR = {vq_dir!r}",
              f"RANDOM_SEED = {int(seed)}", *gin_bindings]
  gin.clear_config()
  try:
    gin_utils.parse_gin_flags([GIN_FILE], bindings, finalize=False)
    steps = int(gin.query_parameter("%TRAIN_STEPS"))
    kwargs = {}
    if on_step is not None and "on_step" in _parameters(loop.train_vqgan):
      kwargs["on_step"] = on_step
    figures = dict(gin.get_configurable(loop.train_vqgan)(**kwargs))
  finally:
    gin.clear_config()
  figures.update(path=vq_dir, steps=steps, images=num_images)
  logging.info("demo VQGAN: %s", json.dumps(figures, default=str))
  return figures


def _parameters(fn: Callable[..., Any]) -> set[str]:
  import inspect  # pylint: disable=g-import-not-at-top
  return set(inspect.signature(getattr(fn, "__wrapped__", fn)).parameters)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out_dir", default="demo_out")
  parser.add_argument("--num_images", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  args, rest = parser.parse_known_args(argv)
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  _, bindings, _, unknown = gin_utils.parse_argv(rest)
  if unknown:
    parser.error(f"unknown arguments {unknown}")
  figures = train_tokenizer(args.out_dir, num_images=args.num_images,
                            seed=args.seed, gin_bindings=bindings)
  print(json.dumps(figures, indent=1, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
