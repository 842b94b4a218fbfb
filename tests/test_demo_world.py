"""The generated demo world: deterministic, consistent labels, distinct splits;
the demo task registrations: idempotent, explicit replace."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio
from PIL import Image

from ofa_jax.metrics import caption as caption_metrics
from ofa_jax.metrics import grounding as grounding_metrics
from ofa_jax.metrics import vqa as vqa_metrics
from tasks import demo
from tasks import demo_baselines
from tasks import demo_world as world


def _pixels(png: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("kind", world.KINDS)
def test_examples_are_a_pure_function_of_seed_split_index(kind):
  a = world.example(kind, 3, seed=7, split="train")
  b = world.example(kind, 3, seed=7, split="train")
  c = world.example(kind, 3, seed=7, split="validation")
  d = world.example(kind, 3, seed=8, split="train")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  differs = lambda x, y: any(  # noqa: E731
      not np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for k in x)
  assert differs(a, c) and differs(a, d)


def test_scenes_render_objects_inside_their_boxes():
  rng = np.random.default_rng(0)
  for _ in range(20):
    scene = world.make_scene(rng, canvas=64)
    assert 1 <= len(scene.objects) <= 3
    pixels = world.render(scene)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    for o in scene.objects:
      x0, y0, x1, y1 = o.box
      assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
      cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
      # The centre of every shape has the object's colour.
      np.testing.assert_array_equal(pixels[cy, cx], world.COLOURS[o.colour])
    # Objects do not overlap, and are listed left to right.
    xs = [o.box[0] for o in scene.objects]
    assert xs == sorted(xs)


def test_labels_are_consistent_with_the_scene():
  for i in range(30):
    ex = world.example("vqa", i, split="validation")
    assert ex["answer"] in world.vqa_answers()
    ex = world.example("classify", i)
    pixels = _pixels(ex["img"])
    assert ex["label"] in world.SHAPES and pixels.shape == (64, 64, 3)
    ex = world.example("detection", i)
    assert ex["boxes"].shape == (len(ex["labels"]), 4)
    ex = world.example("matching", i)
    caption = world.caption_of(world.make_scene(
        world._rng("matching", 0, "train", i), 64))  # pylint: disable=protected-access
    assert (ex["cap"] == caption) == (ex["label"] == "yes")


def test_sudoku_puzzles_are_valid_and_solvable():
  for i in range(30):
    ex = world.example("sudoku", i)
    assert world.sudoku_is_solution(ex["puzzle"], ex["solution"])
    assert ex["puzzle"].count(":") == 12 and ex["puzzle"].count("|") == 3
    assert 4 <= ex["puzzle"].count("0") <= 8
  assert not world.sudoku_is_solution("1:2:3:4|3:4:1:2|2:1:4:3|4:3:2:1",
                                      "1:2:3:4|3:4:1:2|2:1:4:3|4:3:1:2")


def test_function_source_yields_the_examples():
  src = world.function_source("detection", {"train": 3, "test": 2}, seed=1)
  assert set(src.splits) == {"train", "test"}
  rows = list(src.get_dataset("test").as_numpy_iterator())
  assert len(rows) == 2
  expected = world.example("detection", 1, seed=1, split="test")
  np.testing.assert_allclose(rows[1]["boxes"], expected["boxes"])
  with pytest.raises(ValueError, match="unknown kind"):
    world.function_source("nope", {"train": 1})


def test_register_demo_tasks_is_idempotent_and_replace_is_explicit():
  counts = {"train": 8, "validation": 4, "test": 4}
  names = demo.register_demo_tasks(num_examples=counts, replace=True)
  assert len(names) == len(demo.INSTRUCTIONS) == 11 and all(n in seqio.TaskRegistry.names() for n in names)
  assert demo.register_demo_tasks(num_examples=counts) == names  # no-op
  first = seqio.get_mixture_or_task("demo_caption")
  demo.register_demo_tasks(num_examples=counts)
  assert seqio.get_mixture_or_task("demo_caption") is first
  with pytest.raises(ValueError, match="replace=True"):
    demo.register_demo_tasks(image_size=32, num_examples=counts)
  demo.register_demo_tasks(image_size=32, num_examples=counts, replace=True)
  assert seqio.get_mixture_or_task("demo_caption").plan.options["image_size"] == 32
  mixture = seqio.get_mixture_or_task(demo.MIXTURE)
  assert {t.name for t in mixture.tasks} == set(names)
  kinds = {n: seqio.get_mixture_or_task(n).plan.decoding.kind for n in names}
  assert kinds["demo_vqa"] == kinds["demo_classify"] == "closed_set"
  assert kinds["demo_grounding"] == "box"
  assert kinds["demo_text_to_image"] == kinds["demo_image_infilling"] == "image_codes"
  assert all(seqio.get_mixture_or_task(n).metric_fns for n in names)


def test_examples_without_images_have_the_same_labels():
  for kind in ("vqa", "grounding", "detection", "classify"):
    full = world.example(kind, 5, seed=3, split="validation")
    bare = world.example(kind, 5, seed=3, split="validation", images=False)
    assert "img" in full and "img" not in bare
    for k in bare:
      np.testing.assert_array_equal(np.asarray(full[k]), np.asarray(bare[k]))


def test_every_vqa_question_has_a_type():
  types = {world.vqa_question_type(q)
           for q in world.records("vqa", 60, images=False)["question"]}
  assert types == set(world.VQA_QUESTION_TYPES)
  with pytest.raises(ValueError, match="not a demo VQA question"):
    world.vqa_question_type("why is the sky blue?")


def test_question_only_answers_by_hand():
  train_q = ["how many objects are there?"] * 3 + ["is there a red circle?"] * 2 + [
      "what color is the square?"]
  train_a = ["two", "two", "three", "no", "yes", "red"]
  questions = ["how many objects are there?", "is there a red circle?",
               "is there a blue square?", "what shape is the red object?"]
  # Same text: its majority ("no" beats "yes" on the tie, alphabetically);
  # unseen text: the majority of its type; unseen type: the overall majority.
  assert demo_baselines.question_only_answers(train_q, train_a, questions) == [
      "two", "no", "no", "two"]


def test_text_only_boxes_pick_the_box_that_hits_most():
  texts = ["a"] * 4 + ["b"]
  boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 9, 10], [40, 40, 60, 60],
           [20, 20, 30, 30]]
  got = demo_baselines.text_only_boxes(texts, boxes, ["a", "b", "c"])
  # "a": three of its four boxes overlap one another (IoU >= 0.5), the fourth
  # is far away; its mean box hits none of them.
  assert demo_baselines.pairwise_iou([got[0]], boxes[:3]).min() >= 0.5
  assert got[1] == [20, 20, 30, 30]
  np.testing.assert_allclose(got[2], np.mean(boxes, axis=0))
  iou = demo_baselines.pairwise_iou(np.array(boxes, float), np.array(boxes, float))
  for i, a in enumerate(boxes):
    for j, b in enumerate(boxes):
      assert iou[i, j] == pytest.approx(grounding_metrics.box_iou(a, b))


def test_blind_baselines_on_a_tiny_world():
  train_n, n = 60, 30
  base = demo.chance_baselines(n=n, train_examples=train_n, seed=2)
  assert set(base) == {name for name, _, _ in demo.INSTRUCTIONS}
  fit = world.records("vqa", train_n, seed=2, split="train", images=False)
  val = world.records("vqa", n, seed=2, split="validation", images=False)
  # By hand: the majority training answer per question text, else per type.
  by_q, by_type = {}, {}
  for q, a in zip(fit["question"], fit["answer"]):
    by_q.setdefault(q, []).append(a)
    by_type.setdefault(world.vqa_question_type(q), []).append(a)
  top = lambda xs: sorted(set(xs), key=lambda x: (-xs.count(x), x))[0]  # noqa: E731
  guesses = [top(by_q[q]) if q in by_q else top(by_type[world.vqa_question_type(q)])
             for q in val["question"]]
  hits = [g == a for g, a in zip(guesses, val["answer"])]
  assert base["vqa"]["vqa_score"] == pytest.approx(100.0 * np.mean(hits))
  uniform = vqa_metrics.chance_baseline(val["answer"], world.vqa_answers())
  assert base["vqa"]["vqa_score"] >= uniform
  by_type_hits = {}
  for q, hit in zip(val["question"], hits):
    by_type_hits.setdefault(world.vqa_question_type(q), []).append(hit)
  assert {k: v["vqa_score"] for k, v in base["vqa"]["by_type"].items()} == {
      k: pytest.approx(100.0 * np.mean(v)) for k, v in by_type_hits.items()}
  # Closed sets: the training majority, or a uniform guess when that is higher.
  for name, classes in (("classify", world.SHAPES), ("matching", ("yes", "no"))):
    labels = world.records(name, train_n, seed=2, images=False)["label"]
    targets = world.records(name, n, seed=2, split="validation",
                            images=False)["label"]
    fitted = 100.0 * np.mean([t == top(labels) for t in targets])
    assert base[name]["accuracy"] == pytest.approx(
        max(fitted, 100.0 / len(classes)))
  # Captions: the commonest training caption, scored by CIDEr on validation.
  caps = world.records("caption", train_n, seed=2, images=False)["cap"]
  targets = world.records("caption", n, seed=2, split="validation",
                          images=False)["cap"]
  assert base["caption"]["cider"] == pytest.approx(
      caption_metrics.cider(targets, [top(caps)] * n)["cider"])
  assert base["grounding"]["iou_acc"] < 30
  assert base["detection"]["f1"] < 20
  assert base["sudoku"]["solved"] < 5
  assert base["infilling"]["exact_match"] < 20


@pytest.mark.slow
def test_inspect_task_tool_runs_on_a_demo_task():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, os.path.join(root, "tools", "inspect_task.py"),
       "demo_grounding", "-n", "2", "--split", "validation",
       "--sequence_length", "inputs=32", "targets=8"],
      capture_output=True, text=True, timeout=600, cwd=root, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert out.count("=== example") == 2
  assert "[BOX:region]" in out and "decoding: box" in out
  assert "[slot rank 0] IMAGE #0" in out
  assert "<bin_" in out and "/1/bin" in out
  assert "encoder_input_tokens: int32[32]" in out
  assert "decoder_target_tokens: int32[8]" in out
  bad = subprocess.run(
      [sys.executable, os.path.join(root, "tools", "inspect_task.py"), "nope"],
      capture_output=True, text=True, timeout=600, cwd=root, env=env)
  assert bad.returncode == 2 and "unknown task" in bad.stderr
