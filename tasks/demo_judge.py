"""The demo's judge of generated images: the scene tagger of the backbone pretraining.

Why a learned judge: a generated scene is right when it shows the objects asked
for, wherever they sit; pixel distances to the reference would punish a correct
scene drawn elsewhere. The demo already trains a tagger of shapes, colours and
sizes for its backbone (`tasks/demo_backbone.py`, ~98 % per-tag accuracy on
held-out renders), so it judges, the way FID / CLIP scores use a pretrained
network, with the limits of its training: it has seen crisp renders only.

Metrics (both with chance = the same measure on images decoded from random
codes, and the VQGAN's ceiling = on reconstructions of the references):
  * `object_recall` (text-to-image): the fraction of objects named in the
    caption whose colour, shape and size tags all appear in the image;
  * `tag_f1` (image infilling): F1 of the generated image's tags against the
    reference image's tags, both as the judge reads them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional, Sequence

import flax
import flax.linen  # noqa: F401  (flax.linen.meta)
import jax
import numpy as np

from tasks import demo_world as world

JUDGE_FILE = "judge.msgpack"
JUDGE_CONFIG = "judge.json"
_OBJECT_RE = re.compile(r"\b(%s) (%s) (%s)\b" % (
    "|".join(world.SIZES), "|".join(world.COLOURS), "|".join(world.SHAPES)))


def save_judge(directory: str, config: Any, variables: Any,
               image_size: int) -> None:
  """Writes the scene net (params + BatchNorm statistics) next to the backbone."""
  os.makedirs(directory, exist_ok=True)
  blob = flax.serialization.to_bytes(
      flax.linen.meta.unbox(jax.device_get(variables)))
  tmp = os.path.join(directory, JUDGE_FILE + ".tmp")
  with open(tmp, "wb") as f:
    f.write(blob)
  os.replace(tmp, os.path.join(directory, JUDGE_FILE))
  with open(os.path.join(directory, JUDGE_CONFIG), "w") as f:
    json.dump({"config": dataclasses.asdict(config), "image_size": image_size},
              f)


def caption_objects(text: str) -> list[tuple[str, str, str]]:
  """(size, colour, shape) of every object a demo caption names."""
  return [m.groups() for m in _OBJECT_RE.finditer(text or "")]


class SceneJudge:
  """Reads the tags of images with the pretrained scene net."""

  def __init__(self, directory: str):
    from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
    from tasks import demo_backbone  # pylint: disable=g-import-not-at-top
    path = os.path.join(directory, JUDGE_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"no scene judge at {path}: the demo's backbone pretraining writes it "
          "(python -m tasks.demo_backbone --out_dir=DIR)")
    with open(os.path.join(directory, JUDGE_CONFIG)) as f:
      meta = json.load(f)
    self.config = config_lib.OFAConfig(**meta["config"])
    self.image_size = int(meta["image_size"])
    self.net = demo_backbone.SceneNet(self.config)
    x = np.zeros((1, self.image_size, self.image_size, 3), np.float32)
    template = flax.linen.meta.unbox(jax.eval_shape(
        lambda: self.net.init(jax.random.key(0), x, False)))
    with open(path, "rb") as f:
      self.variables = flax.serialization.from_bytes(
          flax.core.unfreeze(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                          template)), f.read())
    self.tag_names = demo_backbone.TAGS
    self._apply = jax.jit(lambda v, x: self.net.apply(v, x, False)[0])

  def tags(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """bool [N, tags]: which shapes, colours and sizes each uint8 image shows."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    batch = []
    for image in images:
      image = np.asarray(image, np.uint8)
      if image.shape[:2] != (self.image_size, self.image_size):
        image = np.asarray(Image.fromarray(image).resize(
            (self.image_size, self.image_size), Image.BICUBIC))
      batch.append(image.astype(np.float32) / 127.5 - 1.0)
    out = []
    for i in range(0, len(batch), 64):
      chunk = np.stack(batch[i:i + 64])
      out.append(np.asarray(self._apply(self.variables, chunk)) > 0)
    return np.concatenate(out) if out else np.zeros((0, len(self.tag_names)), bool)

  def object_recall(self, captions: Sequence[str],
                    images: Sequence[np.ndarray]) -> float:
    """Mean over images of the share of caption objects fully present."""
    tags = self.tags(images)
    index = {t: i for i, t in enumerate(self.tag_names)}
    scores = []
    for caption, shown in zip(captions, tags):
      objects = caption_objects(caption)
      if not objects:
        continue
      scores.append(np.mean([all(shown[index[a]] for a in obj)
                             for obj in objects]))
    return float(np.mean(scores)) if scores else 0.0

  def tag_f1(self, references: Sequence[np.ndarray],
             images: Sequence[np.ndarray]) -> float:
    """Mean over pairs of the F1 of the image's tags against the reference's."""
    ref, gen = self.tags(references), self.tags(images)
    tp = (ref & gen).sum(1)
    denom = ref.sum(1) + gen.sum(1)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return float(f1.mean()) if len(f1) else 0.0


def random_code_images(render: Any, n: int, num_codes: int, grid: int,
                       seed: int = 0) -> np.ndarray:
  """uint8 images decoded from uniformly random codes (the judge's chance)."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, num_codes, size=(n, grid * grid))
  pixels = np.asarray(render(codes))
  return np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)


def judge_or_none(directory: Optional[str]) -> Optional[SceneJudge]:
  try:
    return SceneJudge(directory) if directory else None
  except FileNotFoundError:
    return None


def image_baselines(judge_dir: str, vq_dir: str, n: int, *, seed: int = 0,
                    canvas: int = 64, split: str = "validation"
                    ) -> dict[str, dict[str, float]]:
  """Chance and ceiling of the two image tasks on the first n examples of split.

  Chance: the judge's metric on images decoded from uniformly random codes of
  the demo VQGAN. Ceiling: on the VQGAN's reconstructions of the references
  (what the best code sequence could reach through this tokenizer).
  """
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ofa_jax.model.vqgan import VQGAN  # pylint: disable=g-import-not-at-top
  from ofa_jax.model.vqgan import io as vq_io  # pylint: disable=g-import-not-at-top
  judge = SceneJudge(judge_dir)
  config, variables = vq_io.load_vqgan(vq_dir)
  module = VQGAN(config)
  decode = jax.jit(lambda c: module.apply(variables, c,
                                          method=module.decode_codes))
  encode = jax.jit(lambda x: module.apply(variables, x,
                                          method=module.encode_codes))
  rec = world.records("caption", n, seed=seed, split=split, canvas=canvas)
  side = config.resolution
  references = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize(
      (side, side), Image.BICUBIC)) for png in rec["img"]]
  grid = config.grid_side(side)

  def to_uint8(pixels):
    return np.clip(np.round((np.asarray(pixels) + 1.0) * 127.5), 0,
                   255).astype(np.uint8)

  chance = random_code_images(
      lambda codes: decode(codes.reshape(-1, grid, grid)), n, config.n_embed,
      grid, seed=seed)
  pixels = np.stack(references).astype(np.float32) / 127.5 - 1.0
  ceiling = to_uint8(decode(encode(pixels)))
  return {
      "text_to_image": {
          "object_recall": 100.0 * judge.object_recall(rec["cap"], chance),
          "object_recall_ceiling": 100.0 * judge.object_recall(rec["cap"],
                                                               ceiling),
          "object_recall_references": 100.0 * judge.object_recall(
              rec["cap"], references)},
      "image_infilling": {
          "tag_f1": 100.0 * judge.tag_f1(references, chance),
          "tag_f1_ceiling": 100.0 * judge.tag_f1(references, ceiling)},
  }
