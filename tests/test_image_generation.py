"""Generated pictures everywhere a prediction goes: the batch runner (decode and
render in one program), reranking of n candidates, the Python API's
`.image` / `.save_image`, `python -m ofa_jax.infer` (both modes) and the
evaluator (PNG files, image metrics).

One step-0 checkpoint of a tiny text-to-image model with a random VQGAN head
(`image_codes_fixtures.py`) serves every test of the module.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import seqio
from PIL import Image

from ofa_jax import api
from ofa_jax import evaluation
from ofa_jax import feature_converter as fc_lib
from ofa_jax import infer
from ofa_jax import results as results_lib
from ofa_jax.decoding import rerank
from ofa_jax.decoding import spec as decoding_spec
from ofa_jax.evaluation import pictures
from ofa_jax.evaluation import runner as runner_lib
from ofa_jax.results import Result
import image_codes_fixtures as fx

CAPTIONS = ["a red circle", "a blue square on the left", "two green triangles"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return fx.build(str(tmp_path_factory.mktemp("image_world")))


@pytest.fixture(scope="module")
def generalist(world):
  return api.Generalist.load(world.model_dir)


def _read_png(path):
  with Image.open(path) as im:
    assert im.format == "PNG"
    return np.asarray(im.convert("RGB"))


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def brightness(example, images):
  del example
  return np.asarray(images, np.float64).mean(axis=(1, 2, 3))


def darkness(example, images):
  return -brightness(example, images)


def _model_batch(task_name, n):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      fx.LENGTHS, split="validation", shuffle=False)
  ds = fc_lib.OFAFeatureConverter()(ds, fx.LENGTHS).batch(n)
  return {k: np.asarray(v) for k, v in next(ds.as_numpy_iterator()).items()}


# ---------------------------------------------------------------------------
# Host side: no model.
# ---------------------------------------------------------------------------
class _Fake:
  def __init__(self, tokens, scores, rendered):
    self.tokens, self.scores, self.rendered = tokens, scores, rendered


def _identity_picture(rendered, example):
  del example
  return fx.to_uint8(rendered)


def test_choose_rows_keeps_the_scorers_best_or_the_first_sample():
  rng = np.random.default_rng(0)
  b, k = 3, 4
  rendered = rng.uniform(-1, 1, (b, k, 4, 4, 3)).astype(np.float32)
  tokens = rng.integers(0, 50, (b, k, 7))
  scores = rng.normal(size=(b, k))
  fake = _Fake(tokens, scores, rendered)
  seen = []

  def inputs(j):
    seen.append(j)
    return rerank.example_inputs({"row": np.asarray(j)}, input_text=f"row {j}")

  ranked = rerank.choose_rows(fake, 2, to_picture=_identity_picture,
                              scorer=brightness, examples=inputs)
  assert len(ranked) == 2 and seen == [0, 1]  # padded rows are not scored
  for row, choice in enumerate(ranked):
    want = fx.to_uint8(rendered[row])
    np.testing.assert_array_equal(choice.pictures, want)
    expected_scores = want.astype(np.float64).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(choice.ranking, expected_scores)
    best = int(np.argmax(expected_scores))
    assert choice.index == best
    np.testing.assert_array_equal(choice.picture, want[best])
    np.testing.assert_array_equal(choice.tokens, tokens[row, best])
    assert choice.score == pytest.approx(scores[row, best])
  first = rerank.choose_rows(fake, 2, to_picture=_identity_picture)
  assert [c.index for c in first] == [0, 0] and first[0].ranking is None
  np.testing.assert_array_equal(first[1].picture, fx.to_uint8(rendered[1, 0]))


def test_choose_rows_and_scorer_errors_are_clear():
  fake = _Fake(np.zeros((1, 2, 3), int), np.zeros((1, 2)),
               np.zeros((1, 2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r"shape \(3,\) for 2 candidates"):
    rerank.choose_rows(fake, 1, to_picture=_identity_picture,
                       scorer=lambda e, im: [1.0, 2.0, 3.0],
                       examples=lambda j: {})
  with pytest.raises(ValueError, match="NaN"):
    rerank.choose_rows(fake, 1, to_picture=_identity_picture,
                       scorer=lambda e, im: [np.nan, 1.0], examples=lambda j: {})
  with pytest.raises(ValueError, match="num_candidates > 1"):
    rerank.check_scorer(brightness, 1)
  with pytest.raises(ValueError, match="must be a callable"):
    rerank.check_scorer("clip", 4)
  text = decoding_spec.DecodingSpec(kind="text")
  with pytest.raises(ValueError, match="decodes as 'text'"):
    rerank.candidates_spec(text, 3)
  assert rerank.candidates_spec(text, 1) is text


def test_clip_scorer_ranks_by_cosine_similarity():
  images = np.zeros((3, 2, 2, 3), np.uint8)
  embeddings = np.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
  texts = []

  def embed_text(text):
    texts.append(text)
    return np.asarray([0.0, 3.0])

  scorer = rerank.ClipScorer(lambda im: embeddings, embed_text,
                             text_field="cap")
  example = rerank.example_inputs({}, fields={"cap": "a red circle"},
                                  input_text="what is the image? a red circle")
  got = scorer(example, images)
  np.testing.assert_allclose(got, [0.0, 1 / np.sqrt(2), 1.0])
  assert texts == ["a red circle"]
  rerank.ClipScorer(lambda im: embeddings, embed_text)(example, images)
  assert texts[-1] == "what is the image? a red circle"  # default: input text
  with pytest.raises(ValueError, match="no field 'caption'"):
    rerank.ClipScorer(lambda im: embeddings, embed_text,
                      text_field="caption")(example, images)
  with pytest.raises(ValueError, match="do not match"):
    rerank.ClipScorer(lambda im: embeddings[:, :1], embed_text)(example, images)


def test_result_picture_views_json_and_png(tmp_path):
  picture = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  r = Result.from_prediction(text="<code_1><code_2>", value=picture, score=-2.0,
                             kind="image_codes",
                             candidates=[picture, picture[::-1]],
                             candidate_scores=[0.5, 0.25])
  np.testing.assert_array_equal(r.image, picture)
  assert len(r.images) == 2 and r.scores == [0.5, 0.25]
  row = json.loads(json.dumps(r.to_json()))
  assert row["value"] is None and "image" not in row  # pictures are files
  assert row["candidate_scores"] == [0.5, 0.25]
  path = r.save_image(str(tmp_path / "sub" / "x.png"))
  np.testing.assert_array_equal(_read_png(path), picture)
  text = Result.from_prediction(text="a", value="a", score=0.0, kind="text")
  assert text.image is None and text.images == []
  with pytest.raises(ValueError, match="no generated image"):
    text.save_image(str(tmp_path / "y.png"))
  with pytest.raises(ValueError, match="uint8"):
    results_lib.write_png(str(tmp_path / "z.png"), picture.astype(np.float32))


# ---------------------------------------------------------------------------
# The runner: decode and render in one program.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_runner_renders_every_candidate_as_the_head_decodes_its_codes(world):
  task = seqio.get_mixture_or_task(fx.T2I_TASK)
  spec = rerank.candidates_spec(task.plan.decoding, 3)
  assert runner_lib.renders(spec) and spec.return_all and spec.beam_size == 3
  batch = _model_batch(fx.T2I_TASK, 2)
  runner = runner_lib.BatchRunner(world.model, 2)
  out = runner.predict("t2i", spec, world.variables, batch, jax.random.key(1))
  assert out.tokens.shape[:2] == (2, 3) and out.scores.shape == (2, 3)
  assert out.rendered.shape == (2, 3, fx.SIDE, fx.SIDE, 3)
  codes = out.tokens[..., :fx.GRID]
  offset = world.vocabulary.code_offset
  assert ((codes >= offset) & (codes < offset + fx.NUM_CODES)).all()
  assert (out.tokens[..., fx.GRID] == world.vocabulary.eos_id).all()
  # The reference: the head's decoder on the same codes, outside the program.
  want = np.asarray(world.model.render_codes(world.variables,
                                             codes.reshape(6, fx.GRID)))
  np.testing.assert_allclose(out.rendered.reshape(want.shape), want, atol=1e-4)
  assert len({c.tobytes() for c in codes.reshape(6, -1)}) > 1  # sampled
  # The one-candidate spec renders its one answer; the cache keeps both.
  one = runner.predict("t2i", task.plan.decoding, world.variables, batch,
                       jax.random.key(1))
  assert one.tokens.ndim == 2 and one.rendered.shape == (2, fx.SIDE, fx.SIDE, 3)
  assert len(runner._compiled) == 2  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# The Python API.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_inference_returns_pictures_and_reranks_candidates(world, generalist,
                                                          tmp_path):
  data = [{"cap": c} for c in CAPTIONS]
  kept = generalist.inference(fx.T2I, data, num_candidates=4, batch_size=2,
                              seed=5)
  ranked = generalist.inference(fx.T2I, data, num_candidates=4, batch_size=2,
                                seed=5, scorer=brightness)
  darkest = generalist.inference(fx.T2I, data, num_candidates=4, batch_size=2,
                                 seed=5, scorer=darkness)
  chosen = set()
  for a, b, c in zip(kept, ranked, darkest):
    assert a.kind == "image_codes" and a.text.startswith("<code_")
    assert a.image.dtype == np.uint8 and a.image.shape == (fx.SIDE, fx.SIDE, 3)
    assert len(a.images) == 4
    for other in (b, c):  # the same samples (same seed), ranked differently
      for x, y in zip(a.images, other.images):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.image, a.images[0])  # no scorer: first
    light = [float(np.asarray(im, np.float64).mean()) for im in b.images]
    np.testing.assert_allclose(b.scores, light)
    np.testing.assert_array_equal(b.image, b.images[int(np.argmax(light))])
    np.testing.assert_array_equal(c.image, c.images[int(np.argmin(light))])
    chosen |= {int(np.argmax(light)), int(np.argmin(light))}
  assert chosen != {0}  # the ranking changed a choice somewhere

  # The picture is what the head renders from the result's own codes.
  r = ranked[0]
  codes = np.asarray(r.tokens)[None, :fx.GRID]
  want = fx.to_uint8(np.asarray(world.model.render_codes(world.variables,
                                                         codes))[0])
  assert np.abs(want.astype(int) - r.image.astype(int)).max() <= 1
  path = r.save_image(str(tmp_path / "best.png"))
  np.testing.assert_array_equal(_read_png(path), r.image)
  row = json.loads(json.dumps(r.to_json()))
  assert row["kind"] == "image_codes" and len(row["candidate_scores"]) == 4

  # One picture, no candidates; the infilling task takes an input image.
  single = generalist.inference(fx.T2I, {"cap": CAPTIONS[0]})
  assert single.image.shape == (fx.SIDE, fx.SIDE, 3) and single.images == []
  canvas = (np.random.default_rng(0).uniform(0, 255, (32, 32, 3))
            ).astype(np.uint8)
  filled = generalist.inference(fx.INFILL, {"img": canvas})
  assert filled.image.shape == (fx.SIDE, fx.SIDE, 3)


@pytest.mark.slow
def test_inference_refuses_what_it_cannot_rank(generalist):
  with pytest.raises(ValueError, match="num_candidates > 1"):
    generalist.inference(fx.T2I, {"cap": "x"}, scorer=brightness)
  with pytest.raises(ValueError, match="both set the number of samples"):
    generalist.inference(fx.T2I, {"cap": "x"}, num_candidates=2, beam_size=3)
  with pytest.raises(ValueError, match="decodes as 'text'"):
    generalist.inference("what is the caption? [TEXT:q] -> [TEXT:a]",
                         {"q": "x"}, num_candidates=2)
  # A grid the model was not built for is refused by name, before decoding.
  with pytest.raises(ValueError, match="code_image_size=16"):
    generalist.inference(
        "what is the complete image? caption: [TEXT:cap] -> "
        "[IMAGE:img,image_size=32]", {"cap": "x"})


# ---------------------------------------------------------------------------
# python -m ofa_jax.infer
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_infer_files_writes_one_png_per_generated_picture(world, tmp_path):
  data = tmp_path / "captions.jsonl"
  data.write_text("".join(json.dumps({"cap": c}) + "\n" for c in CAPTIONS))
  out = tmp_path / "out" / "pictures.jsonl"
  rc = infer.main([f"--checkpoint={world.model_dir}", f"--instruction={fx.T2I}",
                   f"--input={data}", f"--output={out}", "--batch_size=2",
                   "--num_candidates=2", "--seed=3"])
  assert rc == 0
  rows = _lines(out)
  assert [r["input"]["cap"] for r in rows] == CAPTIONS
  for i, row in enumerate(rows):
    assert row["kind"] == "image_codes" and row["value"] is None
    assert row["png"] == f"pictures_{i}.png"
    picture = _read_png(out.parent / row["png"])
    assert picture.shape == (fx.SIDE, fx.SIDE, 3)
    assert len(row["candidate_pngs"]) == 2
    first = _read_png(out.parent / row["candidate_pngs"][0])
    np.testing.assert_array_equal(picture, first)  # no scorer: the first


@pytest.mark.slow
def test_infer_task_writes_predicted_and_reference_pngs(world, tmp_path):
  out = tmp_path / "out"
  counts = infer.infer_task(
      model=world.model, checkpoint_path=world.model_dir,
      mixture_or_task_name=fx.T2I_TASK, task_feature_lengths=fx.LENGTHS,
      output_dir=str(out), split="test", batch_size=2)
  assert counts == {fx.T2I_TASK: fx.N_VALIDATION}
  rows = _lines(out / f"{fx.T2I_TASK}_inferences.jsonl")
  examples = list(seqio.get_mixture_or_task(fx.T2I_TASK).get_dataset(
      fx.LENGTHS, split="test", shuffle=False).as_numpy_iterator())
  stream = pictures.owner_of(
      seqio.get_mixture_or_task(fx.T2I_TASK).plan).target_streams[0].name
  for i, row in enumerate(rows):
    assert row["prediction"] == os.path.join(fx.T2I_TASK, f"{i}_pred.png")
    assert _read_png(out / row["prediction"]).shape == (fx.SIDE, fx.SIDE, 3)
    np.testing.assert_array_equal(_read_png(out / row["target"]),
                                  fx.to_uint8(examples[i][stream]))
    assert row["output"].startswith("<code_")


# ---------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluator_writes_pngs_and_gives_pictures_to_the_metrics(world,
                                                                 tmp_path):
  evaluator = evaluation.Evaluator(
      world.model, fx.INFILL_TASK, fx.LENGTHS, batch_size=2,
      num_candidates=2, scorer=brightness)
  # Parameters alone: the frozen VQGAN comes from the head's directory.
  out = tmp_path / "eval" / "7"
  results = evaluator.evaluate(
      {"params": world.variables["params"],
       "batch_stats": world.variables["batch_stats"]},
      step=7, output_dir=str(out))
  metrics = results[fx.INFILL_TASK]
  assert metrics["num_examples"] == fx.N_VALIDATION
  assert np.isfinite(metrics["eval_loss"])
  rows = _lines(out / f"{fx.INFILL_TASK}_predictions.jsonl")
  assert len(rows) == fx.N_VALIDATION
  examples = list(seqio.get_mixture_or_task(fx.INFILL_TASK).get_dataset(
      fx.LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
  stream = pictures.owner_of(
      seqio.get_mixture_or_task(fx.INFILL_TASK).plan).target_streams[0].name
  errors = []
  for i, row in enumerate(rows):
    assert row["prediction"] == os.path.join(fx.INFILL_TASK, f"{i}_pred.png")
    assert row["target"] == os.path.join(fx.INFILL_TASK, f"{i}_ref.png")
    pred = _read_png(out / row["prediction"])
    ref = _read_png(out / row["target"])
    np.testing.assert_array_equal(ref, fx.to_uint8(examples[i][stream]))
    candidates = [_read_png(out / p) for p in row["candidates"]]
    light = [float(c.astype(np.float64).mean()) for c in candidates]
    np.testing.assert_allclose(row["candidate_scores"], light)
    np.testing.assert_array_equal(pred, candidates[int(np.argmax(light))])
    errors.append(np.abs(ref.astype(np.float64) - pred).mean())
  # The metric saw the uint8 pictures the files hold (PNG is lossless).
  assert metrics["pixel_mae"] == pytest.approx(float(np.mean(errors)))
  summary = json.loads((out / "metrics.json").read_text())
  assert summary["step"] == 7
