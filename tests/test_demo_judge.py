"""The demo's judge of generated images (tasks/demo_judge.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ofa_jax.model import config as config_lib
from tasks import demo_backbone
from tasks import demo_judge
from tasks import demo_world


def test_caption_objects_reads_every_object_of_a_demo_caption():
  rng = np.random.default_rng(1)
  for _ in range(20):
    scene = demo_world.make_scene(rng, 64)
    objects = demo_judge.caption_objects(demo_world.caption_of(scene))
    assert objects == [(o.size, o.colour, o.shape) for o in scene.objects]
  assert demo_judge.caption_objects("what is the complete image?") == []


class _FixedTags(demo_judge.SceneJudge):
  """The scoring rules on tags given by hand (no network)."""

  def __init__(self, tags_by_image):  # pylint: disable=super-init-not-called
    self.tag_names = demo_backbone.TAGS
    self._tags = tags_by_image

  def tags(self, images):
    rows = []
    for image in images:
      names = self._tags[int(np.asarray(image).reshape(-1)[0])]
      rows.append([t in names for t in self.tag_names])
    return np.asarray(rows, bool)


def _image(k):
  return np.full((4, 4, 3), k, np.uint8)


def test_object_recall_needs_colour_shape_and_size_of_each_object():
  judge = _FixedTags({0: {"small", "red", "circle"},
                      1: {"small", "red", "square", "large", "blue"}})
  caption = "a small red circle and a large blue square"
  # Image 0: the circle only (1 of 2); image 1: red and blue, a square, both
  # sizes, but no circle: the square counts (large blue square), the circle not.
  assert judge.object_recall([caption, caption], [_image(0), _image(1)]) == 0.5
  assert judge.object_recall([caption], [_image(0)]) == 0.5


def test_tag_f1_against_the_reference_tags():
  judge = _FixedTags({0: {"small", "red", "circle"}, 1: {"small", "red"},
                      2: set()})
  assert judge.tag_f1([_image(0)], [_image(0)]) == 1.0
  assert judge.tag_f1([_image(0)], [_image(1)]) == pytest.approx(0.8)
  assert judge.tag_f1([_image(0)], [_image(2)]) == 0.0


def test_backbone_pretraining_writes_a_judge_that_loads(tmp_path):
  cfg = config_lib.get_config("demo", vocab_size=300, num_codes=0, num_bins=100,
                              resnet_width=4)
  out = str(tmp_path / "bb")
  demo_backbone.pretrain_backbone(cfg, out, steps=2, batch_size=4, canvas=32,
                                  image_size=32, eval_examples=4)
  judge = demo_judge.SceneJudge(out)
  images = [demo_world.render(demo_world.make_scene(np.random.default_rng(i), 32))
            for i in range(3)]
  tags = judge.tags(images)
  assert tags.shape == (3, len(demo_backbone.TAGS)) and tags.dtype == bool
  with pytest.raises(FileNotFoundError, match="no scene judge"):
    demo_judge.SceneJudge(str(tmp_path))
