"""The demo's judge of generated images: which picture is this?

Why a renderer and not a learned judge: a demo picture is fully named by its
caption (`demo_world.picture_scene`: one object, its colour and shape), so the
demo knows every image it could be asked for. A generated
image is judged by the picture whose rendering it is nearest to (mean squared
pixel distance at the image's own size): exact where a learned tagger (FID /
CLIP style) would add its own errors, and the same for text-to-image (the
caption's picture) and image infilling (the reference's picture).

Metrics, in percent of examples: `picture_match` (the nearest picture is the
reference's: colour and shape right), and `colour_match`, `shape_match` (each
attribute of the nearest picture on its own). The report sets them next to chance (the commonest training picture,
`tasks/demo_baselines.py`), images decoded from random codes, and the ceiling:
the VQGAN's reconstructions of the references, the best any code sequence
reaches through this tokenizer.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from tasks import demo_world as world

ATTRIBUTES = ("colour", "shape")


def resize(image: np.ndarray, side: int) -> np.ndarray:
  """uint8 [side, side, 3], as the data pipeline shrinks a rendering."""
  image = np.asarray(image, np.uint8)
  if image.shape[:2] == (side, side):
    return image
  return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


class PictureJudge:
  """Names the demo picture an image shows: the nearest rendering."""

  def __init__(self, canvas: int = 64):
    self.canvas = canvas
    self.pictures = world.pictures()

  def renderings(self, side: int) -> np.ndarray:
    """float32 [pictures, side, side, 3] in [0, 1]."""
    return np.stack([
        resize(world.render(world.picture_scene(*p, self.canvas)), side)
        for p in self.pictures]).astype(np.float32) / 255.0

  def identify(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """int [N]: the index in `pictures` of each uint8 image's nearest rendering."""
    if not len(images):
      return np.zeros((0,), np.int64)
    side = int(np.asarray(images[0]).shape[0])
    shown = np.stack([resize(i, side) for i in images]).astype(np.float32) / 255.
    if shown.ndim != 4 or shown.shape[-1] != 3:
      raise ValueError(f"PictureJudge: images must be [side, side, 3] RGB, got "
                       f"{shown.shape[1:]}")
    refs = self.renderings(side).reshape(len(self.pictures), -1)
    flat = shown.reshape(len(shown), -1)
    dist = ((flat ** 2).sum(1, keepdims=True) - 2.0 * flat @ refs.T
            + (refs ** 2).sum(1)[None])
    return dist.argmin(axis=1)

  def scores(self, references: Sequence[np.ndarray],
             images: Sequence[np.ndarray]) -> dict[str, float]:
    """Percent of images whose nearest picture (or its attributes) is the reference's."""
    if len(references) != len(images):
      raise ValueError(f"PictureJudge: {len(references)} references but "
                       f"{len(images)} images")
    if not len(images):
      return {}
    want = [self.pictures[i] for i in self.identify(references)]
    got = [self.pictures[i] for i in self.identify(images)]
    out = {"picture_match": float(100.0 * np.mean(
        [w == g for w, g in zip(want, got)]))}
    for k, name in enumerate(ATTRIBUTES):
      out[f"{name}_match"] = float(100.0 * np.mean(
          [w[k] == g[k] for w, g in zip(want, got)]))
    return out


def reference_image(target: Any) -> np.ndarray:
  """The reference picture of an evaluator target (a dict with "image", or pixels)."""
  if isinstance(target, Mapping):
    return np.asarray(target["image"])
  return np.asarray(target)


def picture_metrics(targets: Sequence[Any], predictions: Sequence[Any]
                    ) -> dict[str, float]:
  """The evaluator's metric fn of both image tasks (tasks/demo.py METRICS)."""
  return PictureJudge().scores([reference_image(t) for t in targets],
                               [np.asarray(p) for p in predictions])


def random_code_images(render: Any, n: int, num_codes: int, grid: int,
                       seed: int = 0) -> np.ndarray:
  """uint8 images decoded from uniformly random codes."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, num_codes, size=(n, grid * grid))
  return to_uint8(render(codes))


def to_uint8(pixels: Any) -> np.ndarray:
  return np.clip(np.round((np.asarray(pixels) + 1.0) * 127.5), 0,
                 255).astype(np.uint8)


def image_baselines(vq_dir: str, n: int, *, seed: int = 0, canvas: int = 64,
                    split: str = "validation") -> dict[str, dict[str, float]]:
  """Through-the-tokenizer figures of both image tasks on the first n examples.

  `<metric>_random_codes`: the judge on images decoded from uniformly random
  codes of the demo VQGAN; `<metric>_ceiling`: on the VQGAN's reconstructions
  of the references (what the best code sequence could reach).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ofa_jax.model.vqgan import VQGAN  # pylint: disable=g-import-not-at-top
  from ofa_jax.model.vqgan import io as vq_io  # pylint: disable=g-import-not-at-top
  config, variables = vq_io.load_vqgan(vq_dir)
  module = VQGAN(config)
  decode = jax.jit(lambda c: module.apply(variables, c,
                                          method=module.decode_codes))
  encode = jax.jit(lambda x: module.apply(variables, x,
                                          method=module.encode_codes))
  side = config.resolution
  grid = config.grid_side(side)
  import io  # pylint: disable=g-import-not-at-top
  rec = world.records("picture", n, seed=seed, split=split, canvas=canvas)
  references = [resize(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")),
                       side) for png in rec["img"]]
  judge = PictureJudge(canvas)
  chance = random_code_images(
      lambda codes: decode(codes.reshape(-1, grid, grid)), n, config.n_embed,
      grid, seed=seed)
  pixels = np.stack(references).astype(np.float32) / 127.5 - 1.0
  ceiling = to_uint8(decode(encode(pixels)))
  figures = {}
  for name, images in (("random_codes", chance), ("ceiling", ceiling)):
    for metric, value in judge.scores(references, images).items():
      figures[f"{metric}_{name}"] = value
  return {"text_to_image": dict(figures), "image_infilling": dict(figures)}
