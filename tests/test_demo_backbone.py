"""The demo's backbone pretraining: tags, its checkpoint, and loading it."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax import checkpoint_conversion
from ofa_jax import checkpoints
from ofa_jax import models
from ofa_jax.model import config as config_lib
from tasks import demo_backbone
from tasks import demo_world


def test_scene_batch_tags_every_object_and_normalizes_like_the_image_slot():
  rng = np.random.default_rng(0)
  images, targets = demo_backbone.scene_batch(rng, 8, canvas=64, image_size=32)
  assert images.shape == (8, 32, 32, 3)
  assert targets["tags"].shape == (8, len(demo_backbone.TAGS))
  assert targets["box"].shape == (8, 2, 2, 4)  # stride 16: a 2x2 grid at 32 px
  assert -1.0 <= images.min() and images.max() <= 1.0
  again = np.random.default_rng(0)
  for row in targets["tags"]:
    scene = demo_world.make_scene(again, 64)
    demo_world.render(scene)
    want = {a for o in scene.objects for a in (o.shape, o.colour, o.size)}
    assert {demo_backbone.TAGS[i] for i in np.flatnonzero(row)} == want


def test_cell_targets_put_each_object_in_the_cell_of_its_centre():
  square = demo_world.Obj("square", "red", "large", (20.0, 36.0, 44.0, 60.0))
  circle = demo_world.Obj("circle", "blue", "small", (2.0, 2.0, 14.0, 14.0))
  scene = demo_world.Scene((circle, square), 64)
  t = demo_backbone.scene_targets(scene, demo_world.render(scene), grid=4)
  none = {name: len(classes) - 1 for name, classes in demo_backbone.CELL_HEADS}
  # Centres: circle (8, 8) -> cell (0, 0); square (32, 48) -> row 3, column 2.
  assert t["has_box"].sum() == 2 and t["has_box"][0, 0] == t["has_box"][3, 2] == 1
  assert t["colour"][3, 2] == demo_backbone.COLOURS.index("red")
  assert t["shape"][0, 0] == demo_world.SHAPES.index("circle")
  assert t["size"][0, 0] == demo_world.SIZES.index("small")
  assert t["colour"][1, 1] == none["colour"] and t["shape"][2, 2] == none["shape"]
  # Box edges in cell units relative to the cell: square x0 = 20/16 - 2.
  np.testing.assert_allclose(t["box"][3, 2], [20 / 16 - 2, 36 / 16 - 3,
                                               44 / 16 - 2, 60 / 16 - 3])
  red = demo_backbone.COLOURS.index("red")
  # The square covers cells of rows 2-3 and columns 1-2; not the top-left cell.
  assert t["cover"][3, 2, red] == 1 and t["cover"][2, 1, red] == 1
  assert t["cover"][0, 0, red] == 0
  assert t["cover"][0, 0, demo_backbone.COLOURS.index("blue")] == 1


@pytest.mark.slow
def test_pretrained_backbone_loads_into_the_generalist(tmp_path):
  cfg = config_lib.get_config("demo", vocab_size=300, num_codes=0, num_bins=100,
                              resnet_width=4)
  figures = demo_backbone.pretrain_backbone(cfg, str(tmp_path / "bb"), steps=3,
                                            batch_size=4, canvas=32,
                                            image_size=32, eval_examples=8)
  assert 0.0 <= figures["tag_accuracy"] <= 1.0
  assert 0.0 <= figures["object_cell_accuracy"] <= 1.0
  assert figures["box_error_px"] >= 0.0
  meta = checkpoint_conversion.load_metadata(str(tmp_path / "bb"))
  assert meta["source"] == "tasks.demo_backbone" and meta["steps"] == 3
  saved = checkpoint_conversion.load_converted(str(tmp_path / "bb"))
  assert set(saved) == {"params", "batch_stats"}
  for tree in saved.values():  # only the ResNet, at its place in the generalist
    assert list(tree) == ["encoder"] and list(tree["encoder"]) == ["images"]
    assert list(tree["encoder"]["images"]) == ["embed_images"]

  model = models.OFAModel(cfg)
  shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 4),
            "images": (1, 1, 32, 32, 3)}
  # The generalist's variable tree with values drawn on the host: running its
  # init op by op took longer than the pretraining, and only the tree and the
  # scratch values (whatever they are) matter here.
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda r: model.get_initial_variables(r, shapes), jax.random.key(0)))
  rs = np.random.RandomState(0)
  init = jax.tree.map(
      lambda a: jnp.asarray(rs.standard_normal(a.shape).astype(a.dtype)),
      abstract)
  params = checkpoints.load_params(str(tmp_path / "bb"), init["params"],
                                   scratch=init["params"])
  stats = checkpoints.load_params(str(tmp_path / "bb"), init["batch_stats"],
                                  collection="batch_stats",
                                  scratch=init["batch_stats"])
  got = jax.device_get(params["encoder"]["images"]["embed_images"])
  jax.tree.map(np.testing.assert_array_equal, got,
               saved["params"]["encoder"]["images"]["embed_images"])
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(stats["encoder"]["images"]["embed_images"]),
               saved["batch_stats"]["encoder"]["images"]["embed_images"])
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(params["decoder"]),
               jax.device_get(init["params"]["decoder"]))
