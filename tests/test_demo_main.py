"""`make demo`: the budget planning, the report, and (slow) the driver end to end."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tasks import demo_main
from tasks import demo_report
from tasks import demo_world as world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- planning the step count -------------------------------------------------------
def test_plan_keeps_a_run_that_ends_in_time():
  # 100 steps left at 1 step/s, 110 s left: within the 15% tolerance.
  assert demo_main.plan_restart(now=0.0, train_end=110.0, step=20, planned=120,
                                rate=1.0, restart_s=30.0) is None


def test_plan_shrinks_a_run_that_would_overrun():
  steps = demo_main.plan_restart(now=0.0, train_end=100.0, step=20, planned=500,
                                 rate=2.0, restart_s=30.0)
  assert steps == 20 + int(2.0 * (100.0 - 30.0))


def test_plan_grows_a_run_that_would_end_far_too_early():
  steps = demo_main.plan_restart(now=0.0, train_end=1000.0, step=20, planned=100,
                                 rate=1.0, restart_s=50.0)
  assert steps == 20 + 950


def test_plan_does_not_restart_for_nothing():
  # Ends early, but the restart costs more than it gains.
  assert demo_main.plan_restart(now=0.0, train_end=100.0, step=10, planned=50,
                                rate=1.0, restart_s=95.0) is None
  # Out of time: at least one more step, never fewer than done.
  assert demo_main.plan_restart(now=0.0, train_end=5.0, step=10, planned=500,
                                rate=1.0, restart_s=30.0) == 11
  with pytest.raises(ValueError, match="rate"):
    demo_main.plan_restart(now=0.0, train_end=5.0, step=1, planned=2, rate=0.0,
                           restart_s=1.0)


def test_step_log_reads_the_trainer_progress_lines():
  log = demo_main.StepLog()
  logger = logging.getLogger("test_demo_main_steplog")
  logger.setLevel(logging.INFO)
  logger.addHandler(log)
  try:
    logger.info("step %d/%d loss %.4f | %.2f steps/s", 10, 300, 5.0, 1.0)
    logger.info("something else at step 11")
    logger.info("step %d/%d loss %.4f", 20, 300, 4.0)
  finally:
    logger.removeHandler(log)
  assert [s for _, s in log.snapshot()] == [10, 20]


def test_watchdog_replans_and_stops_with_sigterm():
  received = []
  old = signal.signal(signal.SIGTERM, lambda *a: received.append(a[0]))
  log = demo_main.StepLog()
  now = time.monotonic()
  # Started 20 s ago, first progress line (after compiling) 10 s ago at step 10,
  # then 10 steps in 5 s: 2 steps/s; planned 10000 steps cannot end in 200 s.
  dog = demo_main.Watchdog(log, call_start=now - 20.0, deadline=now + 300.0,
                           planned=10000, adapt=True, eval_steps=100.0,
                           min_eval_s=10.0, restart_s=None, tolerance=0.15)
  log.points += [(now - 10.0, 10), (now - 5.0, 20)]
  dog.start()
  try:
    for _ in range(80):
      if received:
        break
      time.sleep(0.05)
  finally:
    dog.finish()
    signal.signal(signal.SIGTERM, old)
  assert received == [signal.SIGTERM]
  assert dog.rate == pytest.approx(2.0)
  assert dog.first_step_s == pytest.approx(10.0, abs=0.5)
  # train_end = deadline - 100 steps / 2 steps/s; restart costs 10 - 10/2 = 5 s.
  assert 20 + 2 * (250 - 5 - 1) <= dog.restart_steps <= 20 + 2 * (250 - 5)
  assert "re-planning" in dog.stopped


def test_arguments():
  args, gin_args = demo_main.parse_args(["--out_dir=x", "--gin.BATCH_SIZE=16"])
  assert args.out_dir == "x" and args.budget_s == 900
  assert gin_args == [f"--gin_file={demo_main.DEFAULT_GIN_FILE}",
                      "--gin.BATCH_SIZE=16"]
  with pytest.raises(SystemExit):
    demo_main.parse_args(["--no_such_flag=1"])


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
         "--train_steps=2", "--log_period=1", "--eval_examples=2",
         "--eval_batch_size=2", "--eval_tasks=classify,grounding",
         "--backbone_steps=2", "--backbone_batch_size=2"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=1500, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = (out / "report.md").read_text()
  for name in ("classify", "grounding"):
    assert f"| {name} | " in report
    assert f"![{name}](predictions_{name}.png)" in report
    assert Image.open(out / f"predictions_{name}.png").size[0] > 0
  assert "![training curves](training_curves.png)" in report
  assert Image.open(out / "training_curves.png").size[0] > 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["training"]["final_step"] == 2
  # The pretrained ResNet was written and loaded into the generalist.
  assert summary["backbone"]["steps"] == 2
  assert (out / "backbone" / "checkpoint").is_dir()
  assert "entries loaded" in proc.stderr and "initialized parameters from" in proc.stderr
  assert set(summary["metrics"]) == {"demo_classify", "demo_grounding"}
  assert "classify" in proc.stdout and "chance" in proc.stdout
