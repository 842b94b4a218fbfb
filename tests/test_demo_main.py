"""`make demo`: arguments, progress lines, the report, the driver end to end (slow)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ofa_jax import log_setup
from tasks import demo
from tasks import demo_main
from tasks import demo_progress
from tasks import demo_report
from tasks import demo_world as world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- arguments ---------------------------------------------------------------------
def test_arguments():
  args, gin_args = demo_main.parse_args(["--out_dir=x", "--gin.TRAIN_STEPS=16"])
  assert args.out_dir == "x" and not args.verbose
  assert gin_args == [f"--gin_file={demo_main.DEFAULT_GIN_FILE}",
                      "--gin.TRAIN_STEPS=16"]
  args, _ = demo_main.parse_args(["--verbose", "--gin_file", "a.gin"])
  assert args.verbose
  for bad in (["--no_such_flag=1"], ["--budget_s=900"], ["--train_steps=3"]):
    with pytest.raises(SystemExit):
      demo_main.parse_args(bad)


def test_the_step_count_is_the_gin_files():
  run = demo_main.configured_run([f"--gin_file={demo_main.DEFAULT_GIN_FILE}"])
  with open(os.path.join(REPO, "gin", demo_main.DEFAULT_GIN_FILE)) as f:
    assert f"TRAIN_STEPS = {run['train_steps']}\n" in f.read()
  assert 1000 <= run["train_steps"] <= 2000 and run["batch_size"] == 32
  run = demo_main.configured_run([f"--gin_file={demo_main.DEFAULT_GIN_FILE}",
                                  "--gin.TRAIN_STEPS=7"])
  assert run["train_steps"] == 7 and run["config"].resnet_width > 0


def test_a_misspelt_override_fails_before_any_work(tmp_path, capsys):
  previous = tmp_path / "model" / "100"
  previous.mkdir(parents=True)
  try:
    rc = demo_main.main([f"--out_dir={tmp_path}", "--gin.TRAIN_STEPZ=3"])
  finally:
    log_setup.reset()
  assert rc == 2
  err = capsys.readouterr().err
  assert "configuration error" in err and "TRAIN_STEPZ" in err
  assert previous.is_dir()  # the previous run is still there


# ---- the progress lines ------------------------------------------------------------
class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_phase_line_measures_the_eta_after_the_first_update():
  clock, out = _Clock(), io.StringIO()
  phase = demo_progress.Phase("training", stream=out, clock=clock,
                              interactive=True)
  phase.update(0, 1000)  # shown; start-up and compilation follow
  assert "step 0/1000" in out.getvalue() and "ETA --:--" in out.getvalue()
  clock.now += 60.0
  phase.update(50)  # the first 50 steps include 60 s of compilation
  clock.now += 10.0
  phase.update(100)  # then 5 steps/s: 900 steps left = 180 s
  assert phase.eta_s() == pytest.approx(180.0)
  running = "training     step 100/1000    [01:10 elapsed, ETA 03:00]"
  assert out.getvalue().endswith("\r" + running)
  phase.finish("loss 1.234")
  done = "training     step 100/1000    [01:10 elapsed]  loss 1.234"
  # Padded to cover the previous text of the line.
  assert out.getvalue().endswith("\r" + done.ljust(len(running)) + "\n")
  phase.update(200)  # ignored once finished
  assert out.getvalue().count("\n") == 1


def test_phase_line_off_a_terminal_prints_rarely():
  clock, out = _Clock(), io.StringIO()
  phase = demo_progress.Phase("evaluation", "task", stream=out, clock=clock,
                              interactive=False, plain_every_s=60.0)
  for k in range(1, 10):
    clock.now += 20.0
    phase.update(k, 9)
  phase.finish()
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue()
  assert len(lines) == 4  # at 60, 120 and 180 s, and the end
  assert lines[-1] == "evaluation   task 9/9         [03:00 elapsed]"
  assert demo_progress.clock_text(3725) == "1:02:05"
  assert demo_progress.clock_text(None) == "--:--"


def test_progress_comes_from_log_records_and_from_a_file(tmp_path):
  out = io.StringIO()
  phase = demo_progress.Phase("evaluation", "task", stream=out, interactive=False)
  logger = logging.getLogger("test_demo_main_progress")
  logger.setLevel(logging.INFO)
  with demo_progress.listening(phase, "evaluation"):
    logger.info("evaluation: decoded x (2/9)",
                extra={"progress": ("evaluation", 2, 9)})
    logger.info("step 5/10", extra={"progress": ("training", 5, 10)})
    logger.info("step 7/10")  # text alone is never read
  logger.info("after", extra={"progress": ("evaluation", 3, 9)})
  assert (phase.done, phase.total) == (2, 9)

  path = tmp_path / "progress.json"
  read = lambda: (json.loads(path.read_text())["step"], 10)  # noqa: E731
  training = demo_progress.Phase("training", stream=out, interactive=False)
  with demo_progress.polling(training, read, every_s=0.01):
    path.write_text('{"step": 4}')
    for _ in range(200):
      if training.done == 4:
        break
      time.sleep(0.01)
  assert (training.done, training.total) == (4, 10)


# ---- the report --------------------------------------------------------------------
def _rows(kind: str, n: int, predict) -> list[dict]:
  rows = []
  for i in range(n):
    ex = world.example(kind, i, split="validation")
    target = {"grounding": lambda e: e["region"].tolist(),
              "classify": lambda e: e["label"]}[kind](ex)
    rows.append({"index": i, "inputs": "...", "target": target,
                 "prediction": predict(ex), "score": -1.0})
  return rows


def test_metric_rows_put_each_metric_next_to_its_baseline():
  metrics = {"demo_classify": {"accuracy": 95.0, "eval_loss": 0.1,
                               "num_examples": 10},
             "demo_grounding": {"iou_acc": 60.0, "mean_iou": 55.0,
                                "num_examples": 10},
             "demo_sudoku": {"solved": 12.0, "cell_accuracy": 80.0}}
  baselines = {"classify": {"accuracy": 25.0}, "grounding": {"iou_acc": 12.5},
               "sudoku": {"solved": 0.1}}
  rows = {r["task"]: r for r in demo_report.metric_rows(metrics, baselines)}
  assert rows["classify"]["chance"] == 25.0 and rows["classify"]["met"] is True
  assert rows["grounding"]["met"] is False and rows["grounding"]["target"] == 70.0
  assert rows["sudoku"]["met"] is None
  assert rows["grounding"]["others"] == {"mean_iou": 55.0}
  table = demo_report.markdown_table(list(rows.values()))
  assert "| classify | accuracy | 95.0 | 25.0 | 90 | ✓ |" in table
  assert "| grounding | iou_acc | 60.0 | 12.5 | 70 | ✗ |" in table


def test_report_draws_predictions_curves_and_tables(tmp_path):
  eval_dir = tmp_path / "eval"
  eval_dir.mkdir()
  shifted = lambda e: (e["region"] + 3.0).tolist()  # noqa: E731
  for kind, rows in (("grounding", _rows("grounding", 5, shifted)),
                     ("classify", _rows("classify", 3, lambda e: "circle"))):
    with open(eval_dir / f"demo_{kind}_predictions.jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  # A task whose rows are not the world's examples gets no pictures.
  bad = _rows("classify", 2, lambda e: "square")
  bad[0]["target"] = "not a shape"
  with open(eval_dir / "demo_matching_predictions.jsonl", "w") as f:
    f.writelines(json.dumps(dict(r, target="maybe")) + "\n" for r in bad)
  train_dir = tmp_path / "train"
  scalars = {"loss": [(10, 5.0), (20, 3.0), (20, 2.9), (30, 2.0)],
             "demo_grounding/loss": [(10, 6.0), (30, 2.5)],
             "demo_grounding/accuracy": [(10, 0.1), (30, 0.6)]}
  curves = demo_report.plot_curves(scalars, str(tmp_path / "curves.png"))
  assert Image.open(curves).size[0] > 500
  path = demo_report.write_report(
      str(tmp_path / "out"), metrics={"demo_grounding": {"iou_acc": 40.0}},
      baselines={"grounding": {"iou_acc": 12.5}}, eval_dir=str(eval_dir),
      train_logdir=str(train_dir), run_info={"steps": 30, "skipped": None})
  text = open(path).read()
  assert "| grounding | iou_acc | 40.0 | 12.5 | 70 | ✗ |" in text
  assert "![grounding](predictions_grounding.png)" in text
  assert "![classify](predictions_classify.png)" in text
  assert "matching: no pictures" in text and "skipped" not in text
  assert "no training scalars" in text
  sheet = np.asarray(Image.open(tmp_path / "out" / "predictions_grounding.png"))
  # Both the gold (green) and the predicted (red) box outlines are drawn.
  assert np.any(np.all(sheet == demo_report.GOLD, axis=-1))
  assert np.any(np.all(sheet == demo_report.PRED, axis=-1))
  assert not (tmp_path / "out" / "predictions_matching.png").exists()


# ---- the driver end to end -------------------------------------------------------------
@pytest.mark.slow
def test_demo_main_end_to_end(tmp_path):
  out = tmp_path / "demo_out"
  cmd = [sys.executable, "-m", "tasks.demo_main", f"--out_dir={out}",
         "--gin.TRAIN_STEPS=2", "--gin.LOG_PERIOD=1", "--eval_examples=2",
         "--eval_batch_size=2", "--backbone_steps=2", "--backbone_batch_size=2",
         "--tokenizer_steps=2", "--tokenizer_images=16", "--cache_examples=8"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=2400, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = (out / "report.md").read_text()
  for name, _, _ in demo.INSTRUCTIONS:  # every task has its row
    assert f"| {name} | " in report
  for name in demo_report.IMAGE_KINDS:
    assert f"![{name}](predictions_{name}.png)" in report
  assert Image.open(out / "predictions_grounding.png").size[0] > 0
  assert "![training curves](training_curves.png)" in report
  # The generated images beside their references, judged next to chance.
  for name in demo_report.GENERATION_KINDS:
    assert f"![{name}](generated_{name}.png)" in report
    assert Image.open(out / f"generated_{name}.png").size[0] > 0
  assert (out / "vqgan" / "vqgan_config.json").is_file()
  assert Image.open(out / "training_curves.png").size[0] > 0
  assert "### VQA by question type" in report
  summary = json.loads((out / "summary.json").read_text())
  assert summary["training"]["final_step"] == 2
  assert summary["training"]["train_steps"] == 2
  assert set(summary["metrics"]) == set(demo.task_names())
  # Generated pictures: chance (blind), random codes and the tokenizer's ceiling.
  assert {"picture_match", "picture_match_random_codes",
          "picture_match_ceiling"} <= set(summary["baselines"]["text_to_image"])
  # The pretrained ResNet was written and loaded into the generalist.
  assert summary["backbone"]["steps"] == 2
  assert (out / "backbone" / "checkpoint").is_dir()
  log = (out / demo_main.LOG_FILE).read_text()
  assert "entries loaded" in log and "initialized parameters from" in log
  # The terminal: one line per phase (no "\r": not a terminal), then the table;
  # the trainer's, orbax's and absl's INFO lines only in the log file.
  phases = [line.split()[0] for line in proc.stdout.splitlines()
            if "elapsed]" in line]
  assert phases == ["backbone", "tokenizer", "codes", "training",
                    "evaluation", "report"], proc.stdout
  assert "training     step 2/2 " in proc.stdout
  assert "classify" in proc.stdout and "chance" in proc.stdout
  assert "initialized parameters from" not in proc.stderr
  assert " INFO " not in proc.stderr, proc.stderr[-3000:]
