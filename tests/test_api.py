"""The Python API on a checkpoint written in the test: typed results, boxes, sets.

One small model (the demo preset shrunk further) gets random weights, saved
with the project's checkpoint manager next to a `model_config.json`, and loaded
back with `Generalist.load`, which is what a user does with a trained MODEL_DIR.
"""

from __future__ import annotations

import io
import json
import os

import jax
import numpy as np
import pytest
import seqio
from PIL import Image

from ofa_jax import api
from ofa_jax.api import model_spec as api_config
from ofa_jax.api import data as api_data
from ofa_jax import checkpoints
from ofa_jax.evaluation import runner as evaluation_lib
from ofa_jax import models
from ofa_jax import run_dir
from ofa_jax import vocab as vocab_lib
from ofa_jax.model import config as config_lib
from ofa_jax.model import testing
from ofa_jax.results import Result
from tasks import demo_world

IMAGE_SIZE = 32
CAPTION = "[IMAGE:img] what does the image describe? -> [TEXT:cap]"
GROUNDING = ('[IMAGE:img] which region does the text " [TEXT:text] " describe? '
             "-> [BOX:region]")
SHAPES = ["circle", "square", "triangle", "diamond"]


def tiny_config(vocabulary) -> config_lib.OFAConfig:
  return config_lib.get_config(
      "demo", vocab_size=vocabulary.vocab_size, num_codes=vocabulary.num_codes,
      d_model=32, attention_heads=2, ffn_dim=64, encoder_layers=1,
      decoder_layers=1, resnet_width=8, max_source_positions=64,
      max_target_positions=64, dropout=0.0)


def save_initial_checkpoint(model_dir: str, model: models.OFAModel,
                            image_size: int = IMAGE_SIZE) -> dict:
  """Saves random params as step 0 of a MODEL_DIR; returns them."""
  batch = api_config.dummy_model_batch(model.config, {"image_size": image_size})
  # Random weights drawn on the host: compiling the init costs as much as a
  # train step, and any well-scaled weights serve.
  variables = testing.random_variables(model.config, batch)
  params = variables["params"]
  state = {"step": np.zeros((), np.int32), "params": params,
           "model_state": {k: v for k, v in variables.items() if k != "params"}}
  mgr = checkpoints.CheckpointManager(model_dir, async_save=False)
  mgr.save(0, state, {}, {}, force=True)
  mgr.close()
  return params


def write_images(directory: str, n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    scene = demo_world.make_scene(rng, 48)
    path = os.path.join(directory, f"scene_{i}.png")
    Image.fromarray(demo_world.render(scene)).save(path)
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def generalist(tmp_path_factory):
  vocabulary = vocab_lib.default_vocabulary(num_codes=16)
  model = models.OFAModel(tiny_config(vocabulary), vocabulary)
  model_dir = str(tmp_path_factory.mktemp("model"))
  params = save_initial_checkpoint(model_dir, model)
  api.save_model_config(model_dir, model.config, vocabulary=vocabulary,
                        task_options={"image_size": IMAGE_SIZE})
  loaded = api.Generalist.load(model_dir)
  return loaded, params, model_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  return write_images(str(tmp_path_factory.mktemp("images")), 3)


@pytest.mark.slow
def test_load_restores_the_saved_parameters(generalist):
  g, params, _ = generalist
  assert g.model.config.d_model == 32
  assert g.task_options == {"image_size": IMAGE_SIZE}
  restored = g._params["params"]  # pylint: disable=protected-access
  assert "batch_stats" in g._params  # pylint: disable=protected-access
  a = jax.tree.leaves(params)
  b = jax.tree.leaves(restored)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_caption_single_dict_and_list(generalist, images):
  g, _, _ = generalist
  one = g.inference(CAPTION, data={"img": images[0]}, beam_size=2, max_len=6,
                    batch_size=2)
  assert isinstance(one, Result)
  assert isinstance(one.text, str) and one.kind == "text"
  assert np.isfinite(one.score)
  assert one.box is None and one.label is None
  many = g.inference(CAPTION, [{"img": p} for p in images], beam_size=2,
                     max_len=6, batch_size=2)
  assert isinstance(many, list) and len(many) == len(images)
  # The same example decodes the same way alone and in a padded batch.
  assert many[0].text == one.text
  assert many[0].score == pytest.approx(one.score, abs=1e-4)
  # max_len counts free tokens: at most 6 before </s>.
  assert all(len(r.text.split()) <= 6 for r in many)


@pytest.mark.slow
def test_sampling_is_deterministic_given_the_seed(generalist, images):
  g, _, _ = generalist
  kw = dict(sampling=True, beam_size=1, temperature=0.7, top_k=5, max_len=4,
            batch_size=2, no_repeat_ngram_size=2)
  a = g.inference(CAPTION, [{"img": p} for p in images[:2]], seed=3, **kw)
  b = g.inference(CAPTION, [{"img": p} for p in images[:2]], seed=3, **kw)
  assert [r.text for r in a] == [r.text for r in b]
  assert all(np.isfinite(r.score) and len(r.text.split()) <= 4 for r in a)


@pytest.mark.slow
def test_closed_set_outputs_are_always_in_the_set(generalist, images):
  g, _, _ = generalist
  instruction = "[IMAGE:img] what shape is in the image? -> [TEXT:label]"
  rows = [{"img": p} for p in images]
  results = g.inference(instruction, rows, closed_set=SHAPES, beam_size=2,
                        batch_size=2)
  for r in results:
    assert r.kind == "closed_set"
    assert r.label in SHAPES, r
    assert r.text == r.label


@pytest.mark.slow
def test_box_has_four_coordinates_inside_the_image(generalist, images,
                                                   tmp_path):
  g, _, _ = generalist
  rows = [{"img": p, "text": "the red circle"} for p in images]
  results = g.inference(GROUNDING, rows, beam_size=2, batch_size=2)
  for path, r in zip(images, results):
    assert r.kind == "box"
    assert r.box is not None and len(r.box) == 4
    w, h = Image.open(path).size
    x0, y0, x1, y1 = r.box
    for x in (x0, x1):
      assert -1e-3 <= x <= w + 1e-3
    for y in (y0, y1):
      assert -1e-3 <= y <= h + 1e-3
    assert r.tokens.shape[-1] >= 4
  out = results[0].save_box(str(tmp_path / "box.png"))
  drawn = np.asarray(Image.open(out).convert("RGB"))
  original = np.asarray(Image.open(images[0]).convert("RGB"))
  assert drawn.shape == original.shape
  assert np.any(drawn != original)  # a rectangle was drawn


def test_prepare_builds_static_features_and_names_bad_fields(images):
  vocabulary = vocab_lib.default_vocabulary(num_codes=16)
  converter = models.OFAModel.FEATURE_CONVERTER_CLS(pack=False)

  def prepare(rows, instruction=CAPTION):
    return api_data.prepare(instruction, rows, vocabulary=vocabulary,
                            options={"image_size": IMAGE_SIZE}, closed_set=None,
                            converter=converter)

  prepared = prepare([{"img": images[0]}, {"img": images[1]}])
  assert len(prepared.model_rows) == 2 and prepared.images == images[:2]
  tokens = prepared.model_rows[0]["encoder_input_tokens"]
  assert tokens.shape[0] % 16 == 0  # bucketed, so calls share compilations
  assert prepared.model_rows[0]["images"].shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
  # The unknown caption is a placeholder: no forced prompt, just </s>.
  assert prepared.examples[0]["targets"].tolist() == [vocabulary.eos_id]
  with pytest.raises(ValueError, match="no field 'img'"):
    prepare([{"image": images[0]}])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    prepare([{"img": "/nonexistent/x.png"}])
  with pytest.raises(ValueError, match="a box is 4 numbers"):
    prepare([{"img": images[0], "region": [1, 2, 3]}],
            "[IMAGE:img] what does the region describe? region: [BOX:region] "
            "-> [TEXT:cap]")
  assert not [n for n in seqio.TaskRegistry.names() if n.startswith("_ofa_api")]


def test_draw_box_without_a_box_raises():
  r = Result.from_prediction(text="a red circle", value="a red circle",
                             score=-1.0, kind="text")
  with pytest.raises(ValueError, match="no box"):
    r.draw_box(np.zeros((8, 8, 3), np.uint8))


def test_draw_box_draws_detection_pairs():
  value = [([1.0, 1.0, 6.0, 6.0], "red circle"), ([2.0, 2.0, 7.0, 7.0], "x")]
  r = Result.from_prediction(text="", value=value, score=0.0, kind="text",
                             image=np.full((10, 10, 3), 255, np.uint8))
  assert len(r.boxes) == 2
  drawn = np.asarray(r.draw_box(color="red"))
  assert drawn[1, 3].tolist() == [255, 0, 0]  # top edge of the first box
  assert json.loads(json.dumps(r.to_json()))["boxes"][1][1] == "x"


def test_load_reads_the_config_gin_of_a_run(tmp_path):
  """Without model_config.json the network comes from the run's config.gin."""
  (tmp_path / "config.gin").write_text(
      "from __gin__ import dynamic_registration\n"
      "from ofa_jax.model import config\nfrom ofa_jax import vocab\n"
      "MODEL_SIZE = 'demo'\nDTYPE = 'float32'\n"
      "VOCABULARY = @vocab.default_vocabulary()\n"
      "vocab.default_vocabulary.num_codes = 16\n"
      "config.get_config.name = %MODEL_SIZE\n"
      "config.get_config.dtype = %DTYPE\n"
      "config.get_config.d_model = 64\n"
      "config.get_config.vocab_size = @gin_utils.vocab_size_of()\n"
      "demo.register_demo_tasks.image_size = 48\n")
  spec = api_config.resolve(str(tmp_path))
  assert spec.config.d_model == 64
  assert spec.task_options == {"image_size": 48}
  assert spec.vocabulary.num_codes == 16
  assert spec.config.vocab_size == spec.vocabulary.vocab_size
  step_dir = tmp_path / "7"
  step_dir.mkdir()
  assert api_config.resolve(str(step_dir)).config.d_model == 64
  assert run_dir.checkpoint_step(str(step_dir)) == 7


def test_load_without_any_config_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="pass config="):
    api_config.resolve(str(tmp_path))


def test_length_overrides_reach_free_length_targets_only():
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from ofa_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top

  def settings(kind, **spec):
    fake_plan = SimpleNamespace(decoding=plan_lib.DecodingSpec(kind=kind, **spec))
    return api.generalist._decoding(fake_plan, {"max_len": 7, "min_len": None})  # pylint: disable=protected-access

  detection = settings("text_and_boxes")
  assert detection.kind == "text_and_boxes" and detection.max_len == 7
  assert detection.max_free_len == 8  # + </s>
  assert settings("box", max_len=4, min_len=4).max_len == 4  # a box stays 4 bins
  with pytest.raises(ValueError, match="'audio_frames', which has no token"):
    settings("audio_frames")


def _bad_files(directory) -> dict[str, str]:
  """{kind: path} of image files that cannot be read."""
  text = os.path.join(directory, "notes.png")
  with open(text, "w") as f:
    f.write("not an image at all")
  truncated = os.path.join(directory, "truncated.png")
  buf = io.BytesIO()
  Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, format="PNG")
  with open(truncated, "wb") as f:
    f.write(buf.getvalue()[:40])
  return {"text": text, "truncated": truncated,
          "missing": os.path.join(directory, "missing.png")}


@pytest.mark.slow
def test_prepare_records_each_bad_row_and_prepares_the_others(images,
                                                              tmp_path):
  bad = _bad_files(str(tmp_path))
  vocabulary = vocab_lib.default_vocabulary(num_codes=16)
  converter = models.OFAModel.FEATURE_CONVERTER_CLS(pack=False)
  rows = [{"img": images[0]}, {"img": bad["text"]}, {"img": bad["missing"]},
          {"image": images[1]}, {"img": bad["truncated"]}, {"img": images[1]},
          "not a dict"]
  prepared = api_data.prepare(CAPTION, rows, vocabulary=vocabulary,
                              options={"image_size": IMAGE_SIZE},
                              closed_set=None, converter=converter,
                              first_index=100, errors="record")
  assert prepared.indices == [0, 5]
  assert len(prepared.model_rows) == 2
  assert prepared.images == [images[0], images[1]]
  by_index = {f.index: f for f in prepared.failures}
  assert sorted(by_index) == [101, 102, 103, 104, 106]
  assert by_index[101].source == bad["text"]
  assert by_index[101].reason == ("undecodable IMAGE in field 'img': not a "
                                  "JPEG/PNG/GIF/BMP image")
  assert by_index[102].source == bad["missing"]
  assert "does not exist" in by_index[102].reason
  assert by_index[103].source == "data[103]"
  assert "no field 'img'" in by_index[103].reason
  assert by_index[104].source == bad["truncated"]
  assert "Invalid PNG" in by_index[104].reason
  assert "expected a dict" in by_index[106].reason
  assert not any(by_index.values()) and not by_index[101].ok
  assert by_index[101].to_json() == {"error": by_index[101].reason,
                                     "source": bad["text"], "index": 101}
  # The default refuses the first bad row, naming it and why.
  with pytest.raises(ValueError, match=r"data\[1\] \(.*notes.png\): "
                     "undecodable IMAGE in field 'img': not a JPEG"):
    api_data.prepare(CAPTION, rows[:2], vocabulary=vocabulary,
                     options={"image_size": IMAGE_SIZE}, closed_set=None,
                     converter=converter)
  assert not [n for n in seqio.TaskRegistry.names() if n.startswith("_ofa_api")]


@pytest.mark.slow
def test_inference_on_a_list_survives_bad_items(generalist, images, tmp_path):
  g, _, _ = generalist
  bad = _bad_files(str(tmp_path))
  kw = dict(beam_size=2, max_len=5, batch_size=2)
  alone = g.inference(CAPTION, [{"img": p} for p in images], **kw)
  rows = [{"img": images[0]}, {"img": bad["text"]}, {"img": images[1]},
          {"img": bad["missing"]}, {"img": images[2]}]
  # chunk_size=4: two chunks, the second continues the first's numbering.
  mixed = g.inference(CAPTION, rows, chunk_size=4, **kw)
  assert len(mixed) == len(rows)
  good = [mixed[0], mixed[2], mixed[4]]
  assert all(isinstance(r, Result) and r.ok for r in good)
  assert [r.text for r in good] == [r.text for r in alone]
  for r, a in zip(good, alone):
    assert r.score == pytest.approx(a.score, abs=1e-4)
  assert isinstance(mixed[1], api.InferenceError) and not mixed[1]
  assert (mixed[1].index, mixed[1].source) == (1, bad["text"])
  assert "not a JPEG/PNG/GIF/BMP image" in mixed[1].reason
  assert (mixed[3].index, mixed[3].source) == (3, bad["missing"])
  # Every item bad: errors only, nothing decoded.
  assert [r.ok for r in g.inference(CAPTION, rows[1:2], **kw)] == [False]
  with pytest.raises(ValueError, match="not a JPEG/PNG/GIF/BMP image"):
    g.inference(CAPTION, {"img": bad["text"]}, **kw)
