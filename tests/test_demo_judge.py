"""The demo's judge of generated images (tasks/demo_judge.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import demo_judge
from tasks import demo_world


def _drawn(picture, side=32):
  return demo_judge.resize(demo_world.render(demo_world.picture_scene(
      *picture, 64)), side)


def test_every_picture_is_its_own_nearest_rendering_at_target_size():
  judge = demo_judge.PictureJudge()
  pictures = demo_world.pictures()
  assert len(pictures) == len(set(pictures)) == 6 * 4
  for side in (32, 64):
    images = [_drawn(p, side) for p in pictures]
    np.testing.assert_array_equal(judge.identify(images), np.arange(len(pictures)))


def test_a_noisy_picture_is_still_recognized_and_a_blank_one_is_not_right():
  judge = demo_judge.PictureJudge()
  rng = np.random.default_rng(0)
  picture = ("blue", "triangle")
  clean = _drawn(picture)
  noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
  blank = np.full_like(clean, 245)
  scores = judge.scores([clean, clean], [noisy, blank])
  assert scores["picture_match"] == 50.0
  assert judge.pictures[judge.identify([noisy])[0]] == picture


def test_attribute_matches_score_each_attribute_on_its_own():
  judge = demo_judge.PictureJudge()
  ref = _drawn(("red", "circle"))
  same_colour = _drawn(("red", "square"))
  same_shape = _drawn(("green", "circle"))
  scores = judge.scores([ref, ref, ref], [same_colour, same_shape, ref])
  assert scores == {"picture_match": pytest.approx(100 / 3),
                    "colour_match": pytest.approx(200 / 3),
                    "shape_match": pytest.approx(200 / 3)}


def test_metric_fn_takes_evaluator_targets_and_refuses_mismatched_lengths():
  ref = _drawn(("yellow", "diamond"))
  assert demo_judge.picture_metrics([{"image": ref}, ref], [ref, ref])[
      "picture_match"] == 100.0
  with pytest.raises(ValueError, match="2 references but 1 images"):
    demo_judge.PictureJudge().scores([ref, ref], [ref])


def test_picture_examples_are_their_captions_rendered():
  judge = demo_judge.PictureJudge()
  captions = {demo_world.picture_caption(*p): p for p in demo_world.pictures()}
  recs = demo_world.records("picture", 12, seed=3)
  import io
  from PIL import Image
  images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in recs["img"]]
  got = [judge.pictures[i] for i in judge.identify(images)]
  assert got == [captions[c] for c in recs["cap"]]
  with pytest.raises(ValueError, match="no picture of a pink circle"):
    demo_world.picture_scene("pink", "circle", 64)
