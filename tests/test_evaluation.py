"""Evaluation of a small random model on demo tasks: metrics.json, JSONL, CLI.

The model is random, so the metric values are whatever they are; what is checked
is the machinery: one prediction line per example, predictions inside the
task's output space (closed-set labels, 4-coordinate boxes), metric keys from the
task's metric functions, the eval loss, static batches (the padded last batch is
dropped), all-candidate scoring when the task asks for it, and the
`python -m ofa_jax.evaluate` entry point on a saved checkpoint.
"""

from __future__ import annotations

import json
import os

import gin
import jax
import numpy as np
import pytest

from ofa_jax import evaluate
from ofa_jax import evaluation
from ofa_jax.evaluation import runner as evaluation_lib
from ofa_jax import models
from ofa_jax import plan as plan_lib
from ofa_jax import vocab as vocab_lib
from ofa_jax.metrics import grounding as grounding_metrics
from ofa_jax.model import testing
from ofa_jax.decoding import spec as decoding_spec
from tasks import demo
from tasks import demo_world
from test_api import save_initial_checkpoint, tiny_config

N = 5  # validation examples per task (batch 4: the last batch is padded)
LENGTHS = dict(demo.FEATURE_LENGTHS, inputs=32, targets=16)


@pytest.fixture(scope="module")
def setup():
  vocabulary = vocab_lib.default_vocabulary(num_codes=16)
  demo.register_demo_tasks(image_size=32, canvas=32, replace=True,
                           num_examples={"train": 4, "validation": N, "test": N},
                           vocabulary=vocabulary)
  plan_lib.register_task(
      "test_eval_classify_scored",
      "[IMAGE:img] what shape is in the image? -> [TEXT:label,closed_set]",
      demo_world.function_source("classify", {"validation": N}, canvas=32),
      metric_fns=demo.METRICS["classify"], replace=True, vocabulary=vocabulary,
      image_size=32, closed_set=list(demo_world.SHAPES), score_candidates=True)
  plan_lib.register_mixture(
      "test_eval_mix", [("demo_classify", 1.0), ("demo_grounding", 1.0),
                        ("test_eval_classify_scored", 1.0)], replace=True)
  model = models.OFAModel(tiny_config(vocabulary), vocabulary)
  return model, vocabulary


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_pad_rows_repeats_the_last_row_and_counts_real_rows():
  batch = {"x": np.arange(6).reshape(3, 2)}
  padded, n = evaluation_lib.pad_rows(batch, 4)
  assert n == 3 and padded["x"].shape == (4, 2)
  np.testing.assert_array_equal(padded["x"][3], batch["x"][2])
  rows = [(i, {"x": np.full(2, i)}) for i in range(5)]
  out = list(evaluation_lib.batches_of(rows, 2))
  assert [n for _, _, n in out] == [2, 2, 1]
  assert all(b["x"].shape == (2, 2) for _, b, _ in out)
  assert out[-1][0].tolist() == [4]
  with pytest.raises(ValueError, match="exceeds"):
    evaluation_lib.pad_rows(batch, 2)


def _task_spec(name, **overrides):
  return decoding_spec.for_task(plan_lib.task_plan(name).decoding, name,
                                overrides=overrides)


def test_task_decoding_follows_the_plan(setup):
  del setup
  box = _task_spec("demo_grounding")
  assert box.kind == "box" and box.max_free_len == 5
  trie = _task_spec("demo_classify", beam_size=1)
  assert trie.kind == "closed_set" and trie.beam_size == 1
  assert not trie.scores_candidates
  scored = _task_spec("test_eval_classify_scored")
  assert scored.scores_candidates
  assert scored.candidates().shape[0] == len(demo_world.SHAPES)
  # Each candidate ends with </s> then padding.
  for row in scored.candidates():
    ids = row.tolist()
    assert 2 in ids and all(t == 1 for t in ids[ids.index(2) + 1:])


def test_per_task_decoding_overrides_are_checked_before_any_work(setup):
  model, _ = setup
  ev = evaluation.Evaluator(
      model, "test_eval_mix", LENGTHS, batch_size=4,
      decode_overrides={"beam_size": 2},
      decoding_overrides={"demo_classify": {"beam_size": 3,
                                            "no_repeat_ngram_size": 2}})
  decodings = ev._decodings  # pylint: disable=protected-access
  assert decodings["demo_classify"].beam_size == 3
  assert decodings["demo_classify"].no_repeat_ngram_size == 2
  assert decodings["demo_grounding"].beam_size == 2
  with pytest.raises(ValueError, match=r"'beam_szie' \(did you mean 'beam_size'"):
    evaluation.Evaluator(model, "test_eval_mix", LENGTHS,
                         decoding_overrides={"demo_classify": {"beam_szie": 3}})
  with pytest.raises(ValueError, match=r"task 'demo_clasify'.*'demo_classify'"):
    evaluation.Evaluator(model, "test_eval_mix", LENGTHS,
                         decoding_overrides={"demo_clasify": {"beam_size": 3}})


@pytest.mark.slow
def test_evaluator_writes_metrics_and_one_line_per_example(setup, tmp_path):
  model, vocabulary = setup
  ev = evaluation.Evaluator(model, "test_eval_mix", LENGTHS, batch_size=4,
                            decode_overrides={"beam_size": 1})
  assert set(ev.task_names) == {"demo_classify", "demo_grounding",
                                "test_eval_classify_scored"}
  batch = ev.example_batch()
  # Host-drawn weights: compiling the init costs as much as a train step.
  params = testing.random_variables(model.config, batch, seed=1)["params"]
  results = ev.evaluate(params, step=3, output_dir=str(tmp_path))

  summary = json.loads((tmp_path / "metrics.json").read_text())
  assert summary["step"] == 3
  assert summary["tasks"] == json.loads(json.dumps(results))
  for name in ev.task_names:
    metrics = results[name]
    assert metrics["num_examples"] == N
    assert np.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    assert 0.0 <= metrics["eval_token_accuracy"] <= 1.0
    rows = _lines(tmp_path / f"{name}_predictions.jsonl")
    assert [r["index"] for r in rows] == list(range(N))
    for r in rows:
      assert set(r) >= {"inputs", "target", "prediction", "score"}
      assert r["inputs"].startswith("[IMAGE]")
      assert np.isfinite(r["score"])
  # The keys and the 0-100 scale the metric functions return (test_metrics.py).
  assert "accuracy" in results["demo_classify"]
  assert {"iou_acc", "mean_iou"} <= set(results["demo_grounding"])
  for name in ("demo_classify", "test_eval_classify_scored"):
    for r in _lines(tmp_path / f"{name}_predictions.jsonl"):
      assert r["prediction"] in demo_world.SHAPES, r
      assert r["target"] in demo_world.SHAPES
  boxes = _lines(tmp_path / "demo_grounding_predictions.jsonl")
  for r in boxes:
    assert r["prediction"] is None or len(r["prediction"]) == 4
    assert len(r["target"]) == 4
  # The metrics agree with the written predictions (they saw the same ones),
  # in percent: accuracy = 100 * hits / N; IoU accuracy = 100 * (IoU >= 0.5) / N.
  rows = _lines(tmp_path / "demo_classify_predictions.jsonl")
  hits = sum(r["prediction"] == r["target"] for r in rows)
  assert results["demo_classify"]["accuracy"] == pytest.approx(100 * hits / N)
  ious = [0.0 if r["prediction"] is None else
          grounding_metrics.box_iou(r["target"], r["prediction"]) for r in boxes]
  assert results["demo_grounding"]["iou_acc"] == pytest.approx(
      100 * sum(iou >= 0.5 for iou in ious) / N)
  assert results["demo_grounding"]["mean_iou"] == pytest.approx(
      100 * sum(ious) / N)
  # A second evaluation reuses the cached data and compiled functions.
  again = ev.evaluate(params, step=4)
  assert again == results


@pytest.mark.slow
def test_evaluate_entry_point_on_a_saved_checkpoint(setup, tmp_path):
  model, vocabulary = setup
  model_dir = str(tmp_path / "model")
  save_initial_checkpoint(model_dir, model)
  os.makedirs(model_dir, exist_ok=True)
  c = model.config
  experiment = tmp_path / "eval_experiment.gin"
  experiment.write_text(f"""
include 'runs/eval.gin'
from __gin__ import dynamic_registration
from ofa_jax import evaluation
from ofa_jax import models
from ofa_jax import vocab
from ofa_jax.model import config
from tasks import demo

VOCAB = @vocab.default_vocabulary()
vocab.default_vocabulary.num_codes = 16
MODEL = @models.OFAModel()
models.OFAModel.config = @config.get_config()
models.OFAModel.vocabulary = %VOCAB
config.get_config:
  name = 'demo'
  vocab_size = {c.vocab_size}
  num_codes = 16
  d_model = {c.d_model}
  attention_heads = {c.attention_heads}
  ffn_dim = {c.ffn_dim}
  encoder_layers = {c.encoder_layers}
  decoder_layers = {c.decoder_layers}
  resnet_width = {c.resnet_width}
  max_source_positions = {c.max_source_positions}
  max_target_positions = {c.max_target_positions}
  dropout = 0.0
demo.register_demo_tasks:
  image_size = 32
  canvas = 32
  replace = True
  num_examples = {{'train': 4, 'validation': {N}, 'test': {N}}}
  vocabulary = %VOCAB
evaluation.evaluate_checkpoint.register_fns = [@demo.register_demo_tasks]
evaluation.evaluate_checkpoint.decoding_overrides = {{'demo_classify': {{'beam_size': 1}}}}
MIXTURE_OR_TASK_NAME = 'demo_classify'
TASK_FEATURE_LENGTHS = {LENGTHS!r}
BATCH_SIZE = 8
""")
  out_dir = tmp_path / "eval"
  try:
    rc = evaluate.main([f"--gin_file={experiment}",
                        f"--gin.CHECKPOINT_PATH='{model_dir}'",
                        f"--gin.EVAL_OUTPUT_DIR='{out_dir}'"])
  finally:
    gin.clear_config()
  assert rc == 0
  summary = json.loads((out_dir / "metrics.json").read_text())
  assert summary["step"] == 0
  assert summary["tasks"]["demo_classify"]["num_examples"] == N
  assert len(_lines(out_dir / "demo_classify_predictions.jsonl")) == N
  assert "evaluate_checkpoint" in (out_dir / "config.gin").read_text()


def test_evaluate_entry_point_reports_a_missing_macro(tmp_path, capsys):
  try:
    rc = evaluate.main(["--gin_file=runs/eval.gin"])
  finally:
    gin.clear_config()
  assert rc == 2
  assert "configuration error" in capsys.readouterr().err


@pytest.mark.slow
def test_training_evaluates_every_task_during_the_run(setup, tmp_path):
  """`trainer.train(eval_period=...)` decodes every task and logs its metrics."""
  from ofa_jax import optimizers
  from ofa_jax import partitioning
  from ofa_jax import trainer
  model, _ = setup
  model_dir = str(tmp_path / "run")
  # One device and greedy decoding: neither the mesh (test_partitioning.py)
  # nor the beam is what this test is about, and a checkpoint replicated over
  # the 8 fake devices or a beam program cost more than the two steps.
  trainer.train(
      model=model, model_dir=model_dir, mixture_or_task_name="test_eval_mix",
      task_feature_lengths=LENGTHS, train_steps=2, batch_size=8,
      optimizer=optimizers.adamw(learning_rate=1e-3, total_steps=2),
      partitioner=partitioning.make_partitioner(devices=jax.devices()[:1]),
      checkpoint_period=2, log_period=1, async_checkpoints=False,
      eval_period=1, eval_kwargs={"num_examples": 3, "batch_size": 4,
                                  "decode_overrides": {"beam_size": 1}},
      handle_signals=False)
  for step in ("1", "2"):
    with open(os.path.join(model_dir, "eval", step, "metrics.json")) as f:
      metrics = json.load(f)
    # Every task of the mixture, the one without a train split too.
    assert set(metrics["tasks"]) == {"demo_classify", "demo_grounding",
                                     "test_eval_classify_scored"}
    assert all(m["num_examples"] == 3 for m in metrics["tasks"].values())
  scalars = trainer.read_scalars(os.path.join(model_dir, "train"))
  assert [s for s, _ in scalars["eval/demo_classify/accuracy"]] == [1, 2]
  assert os.path.exists(os.path.join(model_dir, "model_config.json"))


def test_every_pass_sees_every_example_after_a_reader_stopped_early(setup):
  """A reader that stops after one row (as `example_batch` does) must not leave
  a half-written cache that truncates later passes (seen once as 5 of 100)."""
  model, _ = setup
  ev = evaluation.Evaluator(model, "demo_classify", LENGTHS, batch_size=4,
                            num_examples=4)
  early = ev._rows("demo_classify")  # pylint: disable=protected-access
  next(early)  # kept alive while the full passes below run
  for _ in range(2):
    rows = list(ev._rows("demo_classify"))  # pylint: disable=protected-access
    assert [i for i, _ in rows] == [0, 1, 2, 3]
  with pytest.raises(RuntimeError, match="gave 3 examples in this pass but 4"):
    ev._check_count("demo_classify", 3)  # pylint: disable=protected-access
  del early
