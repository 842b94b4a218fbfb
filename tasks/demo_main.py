"""`make demo`: train the demo preset under a wall-clock budget, evaluate, report.

    python -m tasks.demo_main --out_dir=demo_out [--budget_s=900] [--gin.NAME=VALUE ...]

Why a driver around the real entry points and not a loop of its own: the demo is
the proof that `python -m ofa_jax.train --gin_file=experiments/demo.gin` and the
evaluator work end to end, so it calls exactly those (`ofa_jax.train.main`, in
process, and `ofa_jax.evaluation.evaluate_checkpoint`) and only adds the budget.

How the budget is kept: the trainer takes a step count, not a time, and the
learning-rate schedule decays to zero at that count, so stopping a run early
would leave the learning rate high. The driver therefore starts with a guess,
measures the real step rate from the trainer's progress lines, and when the
guess is off by more than a tolerance stops the run (SIGTERM: the trainer saves
and returns) and resumes it with the step count that ends in time, paying one
more start-up. A watchdog stops training at the last moment that leaves time for
the evaluation, whatever happens. Before training, the demo's ResNet is
pretrained (`tasks/demo_backbone.py`, ~45 s, inside the budget) and the training
call starts from it. Everything lands in `--out_dir`: `backbone/`, `model/`
(checkpoints, config.gin, event files), `eval/` (metrics.json, predictions),
`report.md` with its PNGs, and `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from typing import Any, Optional, Sequence

DEFAULT_GIN_FILE = "experiments/demo.gin"
STEP_LINE = re.compile(r"^step (\d+)/(\d+)\b")
_GIN_FLAGS_WITH_VALUE = ("--gin_file", "--gin_bindings", "--gin_search_paths")


# ---- deciding the step count ------------------------------------------------------
def plan_restart(*, now: float, train_end: float, step: int, planned: int,
                 rate: float, restart_s: float, tolerance: float = 0.15
                 ) -> Optional[int]:
  """None to let the planned run finish, else the total steps of a resumed run.

  `rate` is steps/s measured after compilation; `restart_s` what a resume costs
  before its first step (start-up and compilation, measured on the first run).
  The planned run is kept when it ends before `train_end` and uses at least
  (1 - tolerance) of the time left; otherwise the resumed run gets the steps
  that end at `train_end`. Never plans fewer steps than already done (+1).
  """
  if rate <= 0:
    raise ValueError(f"plan_restart: rate must be positive, got {rate}")
  left = train_end - now
  finish_in = (planned - step) / rate
  if finish_in <= left and finish_in >= (1.0 - tolerance) * left:
    return None
  steps = step + int(rate * max(left - restart_s, 0.0))
  if finish_in <= left and steps <= planned:  # a restart would not gain anything
    return None
  return max(steps, step + 1)


class StepLog(logging.Handler):
  """Collects (time, step) from the trainer's progress lines ("step N/T loss ...")."""

  def __init__(self):
    super().__init__(level=logging.INFO)
    self.points: list[tuple[float, int]] = []
    self._lock = threading.Lock()

  def emit(self, record: logging.LogRecord) -> None:
    try:
      m = STEP_LINE.match(record.getMessage())
    except Exception:  # pylint: disable=broad-except
      return
    if m:
      with self._lock:
        self.points.append((time.monotonic(), int(m.group(1))))

  def snapshot(self) -> list[tuple[float, int]]:
    with self._lock:
      return list(self.points)


class Watchdog(threading.Thread):
  """Measures the step rate of one training call; stops it early when needed.

  Stops by SIGTERM to this process (the trainer's handler saves and returns).
  `restart_steps` is set when the run should be resumed with another count.
  """

  def __init__(self, log: StepLog, *, call_start: float, deadline: float,
               planned: int, adapt: bool, eval_steps: float, min_eval_s: float,
               restart_s: Optional[float], tolerance: float,
               guard: Optional["_SigtermGuard"] = None):
    super().__init__(daemon=True)
    self.guard = guard
    self.log, self.call_start, self.deadline = log, call_start, deadline
    self.planned, self.adapt, self.tolerance = planned, adapt, tolerance
    self.eval_steps, self.min_eval_s = eval_steps, min_eval_s
    self.restart_s = restart_s
    self.first_step_s: Optional[float] = None  # start-up + compile of this call
    self.rate: Optional[float] = None
    self.restart_steps: Optional[int] = None
    self.stopped: Optional[str] = None
    self._done = threading.Event()
    self._decided = not adapt
    self._first_index = len(log.snapshot())

  def train_end(self) -> float:
    """The last moment training may run: the deadline minus the evaluation."""
    eval_s = self.min_eval_s
    if self.rate:
      eval_s = max(eval_s, self.eval_steps / self.rate)
    return self.deadline - eval_s

  def _send_stop(self, why: str) -> None:
    if self.stopped is None:
      self.stopped = why
      logging.warning("demo: stopping training (%s)", why)
    if self.guard is not None:
      self.guard.expecting = True
    os.kill(os.getpid(), signal.SIGTERM)

  def run(self) -> None:
    while not self._done.wait(0.25):
      if self.stopped is not None:
        # Again every few seconds: a signal that arrived before the trainer
        # installed its handler was swallowed by the driver's (see `main`).
        if self._done.wait(3.0):
          return
        self._send_stop(self.stopped)
        continue
      points = self.log.snapshot()[self._first_index:]
      if points and self.first_step_s is None:
        self.first_step_s = points[0][0] - self.call_start
      if len(points) >= 2:
        (t0, s0), (t1, s1) = points[0], points[-1]
        if s1 > s0 and t1 > t0:
          self.rate = (s1 - s0) / (t1 - t0)
      now = time.monotonic()
      if now >= self.train_end():
        self._send_stop("the time budget for training is spent")
        continue
      if not self._decided and self.rate and len(points) >= 2:
        self._decided = True
        restart_s = self.restart_s
        if restart_s is None:  # start-up + compile, less the steps in it
          restart_s = max(self.first_step_s - points[0][1] / self.rate, 0.0)
        steps = plan_restart(now=now, train_end=self.train_end(),
                             step=points[-1][1], planned=self.planned,
                             rate=self.rate, restart_s=restart_s,
                             tolerance=self.tolerance)
        logging.info("demo: %.3f steps/s measured; planned %d steps, %s", self.rate,
                     self.planned, "keeping them" if steps is None
                     else f"resuming with {steps} steps")
        if steps is not None:
          self.restart_steps = steps
          self._send_stop(f"re-planning to {steps} steps")

  def finish(self) -> None:
    self._done.set()
    self.join(timeout=5)


# ---- the three stages --------------------------------------------------------------
def latest_step(model_dir: str) -> Optional[int]:
  if not os.path.isdir(model_dir):
    return None
  steps = [int(d) for d in os.listdir(model_dir) if d.isdigit()]
  return max(steps) if steps else None


def train(args: argparse.Namespace, gin_args: Sequence[str], model_dir: str,
          start: float, guard: Optional["_SigtermGuard"] = None
          ) -> dict[str, Any]:
  """Runs `ofa_jax.train` (once, or twice after re-planning); returns its record."""
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import train as train_entry  # pylint: disable=g-import-not-at-top
  deadline = start + args.budget_s - args.report_s
  log = StepLog()
  logging.getLogger().addHandler(log)
  planned = args.train_steps or max(1, int(
      (deadline - args.min_eval_s - time.monotonic() - args.assumed_startup_s)
      / args.assumed_step_s))
  record: dict[str, Any] = {"phases": []}
  restart_s = None
  try:
    for phase in range(args.max_phases):
      dog = Watchdog(log, call_start=time.monotonic(), deadline=deadline,
                     planned=planned, adapt=not args.train_steps and phase == 0,
                     eval_steps=args.eval_cost_steps, min_eval_s=args.min_eval_s,
                     restart_s=restart_s, tolerance=args.tolerance,
                     guard=guard)
      dog.start()
      gin.clear_config()
      argv = list(gin_args) + [f"--gin.MODEL_DIR={model_dir!r}",
                               f"--gin.TRAIN_STEPS={planned}",
                               f"--gin.LOG_PERIOD={args.log_period}"]
      t0 = time.monotonic()
      try:
        rc = train_entry.main(argv)
      finally:
        dog.finish()
        if guard is not None:
          guard.expecting = False
      if rc != 0:
        raise RuntimeError(f"demo: ofa_jax.train exited with status {rc} "
                           f"(arguments {argv}); see the messages above")
      step = latest_step(model_dir)
      record["phases"].append({
          "planned_steps": planned, "reached_step": step,
          "seconds": round(time.monotonic() - t0, 1),
          "startup_s": None if dog.first_step_s is None else round(dog.first_step_s, 1),
          "steps_per_s": None if dog.rate is None else round(dog.rate, 4),
          "stopped": dog.stopped})
      restart_s = dog.first_step_s
      if dog.restart_steps is None or step is None:
        break
      planned = dog.restart_steps
  finally:
    logging.getLogger().removeHandler(log)
  record["final_step"] = latest_step(model_dir)
  if record["final_step"] is None:
    raise RuntimeError(f"demo: training left no checkpoint in {model_dir}")
  return record


def evaluate(args: argparse.Namespace, model_dir: str, eval_dir: str
             ) -> tuple[dict[str, dict[str, float]], Any]:
  """Every demo task (or `--eval_tasks`) on the validation split, real evaluator.

  Returns (metrics per task, the model that was evaluated)."""
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
  from ofa_jax import models  # pylint: disable=g-import-not-at-top
  from ofa_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from tasks import demo  # pylint: disable=g-import-not-at-top
  # The gin configuration of the last training call is still parsed: the same
  # network, vocabulary and task registration arguments as training.
  gin.get_configurable(demo.register_demo_tasks)()
  model = gin.get_configurable(models.OFAModel)()
  name = demo.MIXTURE
  if args.eval_tasks:
    wanted = [t.strip() for t in args.eval_tasks.split(",") if t.strip()]
    unknown = sorted(set(wanted) - {t[len(demo.PREFIX):] for t in demo.task_names()})
    if unknown:
      raise ValueError(f"demo: --eval_tasks names unknown tasks {unknown}; the demo "
                       f"tasks are {[t[len(demo.PREFIX):] for t in demo.task_names()]}")
    name = "demo_eval_subset"
    plan_lib.register_mixture(name, [(demo.PREFIX + t, 1.0) for t in wanted],
                              replace=True)
  metrics = evaluation.evaluate_checkpoint(
      model=model, checkpoint_path=model_dir, mixture_or_task_name=name,
      task_feature_lengths=demo.FEATURE_LENGTHS, output_dir=eval_dir,
      batch_size=args.eval_batch_size, split="validation",
      num_examples=args.eval_examples or None)
  return metrics, model


def describe_model(model: Any, model_dir: str) -> str:
  """Size and shape of the network, for the report."""
  c = model.config
  text = (f"d_model {c.d_model}, {c.encoder_layers}+{c.decoder_layers} layers, "
          f"{c.attention_heads} heads, ResNet width {c.resnet_width} "
          f"{tuple(c.resnet_layers)}, vocabulary {c.vocab_size} ids")
  try:
    with open(os.path.join(model_dir, "model-info.txt")) as f:
      m = re.search(r"total parameters: ([0-9,]+)", f.read())
    if m:
      text = f"{m.group(1)} parameters; " + text
  except OSError:
    pass
  return text


def world_args(split: str = "validation"):
  """Seed and canvas the demo tasks were registered with (for the pictures)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import demo  # pylint: disable=g-import-not-at-top
  from tasks import demo_report  # pylint: disable=g-import-not-at-top
  try:
    sig = seqio.TaskRegistry.get(demo.task_names()[0]).plan.options["demo_signature"]
    return demo_report.WorldArgs(seed=int(sig[2]), canvas=int(sig[3]), split=split)
  except (KeyError, AttributeError, IndexError, TypeError, ValueError):
    return demo_report.WorldArgs(split=split)


def _configured_backbone(gin_args: Sequence[str]) -> dict[str, Any]:
  """The network config and image geometry the training gin will use.

  Parses the same gin files and bindings as the training call (then clears
  them), so the pretrained ResNet has exactly the trained model's shape and
  sees images of the trained resolution.
  """
  import inspect  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from ofa_jax import models  # pylint: disable=g-import-not-at-top
  from tasks import demo  # pylint: disable=g-import-not-at-top
  files, bindings, paths, _ = gin_utils.parse_argv(
      list(gin_args) + ["--gin.MODEL_DIR='unused'"])
  gin.clear_config()
  gin_utils.parse_gin_flags(files, bindings, paths, finalize=False)
  try:
    config = gin.get_configurable(models.OFAModel)().config
    defaults = inspect.signature(demo.register_demo_tasks).parameters
    geometry = {}
    for name in ("image_size", "canvas", "seed"):
      try:
        geometry[name] = gin.query_parameter(f"demo.register_demo_tasks.{name}")
      except ValueError:
        geometry[name] = defaults[name].default
  finally:
    gin.clear_config()
  return {"config": config, **geometry}


def pretrain_backbone(args: argparse.Namespace, gin_args: Sequence[str],
                      out_dir: str) -> Optional[dict[str, Any]]:
  """Pretrains the demo ResNet (`tasks.demo_backbone`) into out_dir/backbone.

  None with --backbone_steps=0. With --resume an existing backbone is reused.
  """
  if args.backbone_steps <= 0:
    return None
  from ofa_jax import checkpoint_conversion  # pylint: disable=g-import-not-at-top
  from tasks import demo_backbone  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, "backbone")
  if args.resume and os.path.isdir(os.path.join(path, "checkpoint")):
    return {"path": path, **checkpoint_conversion.load_metadata(path)}
  shutil.rmtree(path, ignore_errors=True)
  target = _configured_backbone(gin_args)
  figures = demo_backbone.pretrain_backbone(
      target["config"], path, steps=args.backbone_steps,
      batch_size=args.backbone_batch_size, seed=int(target["seed"]),
      canvas=int(target["canvas"]), image_size=int(target["image_size"]))
  return {"path": path, **figures}


# ---- main ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(
      prog="python -m tasks.demo_main",
      description="Train the demo preset on the demo mixture under a wall-clock "
      "budget, evaluate every task, write report.md. Other arguments (--gin_file, "
      "--gin_bindings, --gin.NAME=VALUE) go to ofa_jax.train.")
  p.add_argument("--out_dir", default="demo_out")
  p.add_argument("--budget_s", type=float, default=900.0,
                 help="wall clock for the whole command, training included")
  p.add_argument("--train_steps", type=int, default=0,
                 help="fixed step count (0: as many as the budget allows)")
  p.add_argument("--eval_examples", type=int, default=100,
                 help="validation examples per task (0: the whole split)")
  p.add_argument("--eval_batch_size", type=int, default=100)
  p.add_argument("--eval_tasks", default="",
                 help="comma-separated short task names (default: all)")
  p.add_argument("--log_period", type=int, default=10)
  p.add_argument("--assumed_step_s", type=float, default=0.42,
                 help="first guess of one step's seconds (re-planned when off; "
                 "measured on 2 idle cores: 0.39-0.42)")
  p.add_argument("--assumed_startup_s", type=float, default=55.0,
                 help="first guess of a training call's start-up + compilation")
  p.add_argument("--eval_cost_steps", type=float, default=270.0,
                 help="evaluation time reserved, in training steps (measured: "
                 "the 9 x 100 validation examples cost ~220 steps' time)")
  p.add_argument("--min_eval_s", type=float, default=110.0)
  p.add_argument("--report_s", type=float, default=30.0,
                 help="wall clock kept after the evaluation: the report, and a "
                 "margin (two of five measured training calls took ~40 s to "
                 "return after their last checkpoint)")
  p.add_argument("--tolerance", type=float, default=0.1)
  p.add_argument("--max_phases", type=int, default=2)
  p.add_argument("--backbone_steps", type=int, default=300,
                 help="steps of ResNet pretraining before training (OFA starts "
                 "from a pretrained ResNet; 0: train the backbone from scratch)")
  p.add_argument("--backbone_batch_size", type=int, default=64)
  p.add_argument("--resume", action="store_true",
                 help="continue the run in out_dir/model instead of starting over")
  args, rest = p.parse_known_args(list(argv))
  bad = [a for i, a in enumerate(rest) if not a.startswith("--gin") and not (
      i > 0 and rest[i - 1] in _GIN_FLAGS_WITH_VALUE)]
  if bad:
    p.error(f"unrecognized arguments {bad}")
  if args.budget_s <= 0 or args.eval_batch_size <= 0:
    p.error("--budget_s and --eval_batch_size must be positive")
  if not any(a.startswith("--gin_file") for a in rest):
    rest = [f"--gin_file={DEFAULT_GIN_FILE}"] + rest
  return args, rest


class _SigtermGuard:
  """Swallows the watchdog's own SIGTERMs outside the trainer's handler.

  A stop sent while the trainer is still starting up must not kill the demo (the
  watchdog sends it again until the trainer takes it); a SIGTERM from anyone
  else still ends the demo.
  """

  def __init__(self):
    self.expecting = False

  def __call__(self, signum, frame) -> None:
    del frame
    if not self.expecting:
      raise SystemExit(128 + signum)
    logging.info("demo: stop request arrived before the training loop; resending")


def main(argv: Optional[Sequence[str]] = None) -> int:
  start = time.monotonic()
  args, gin_args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger().setLevel(logging.INFO)
  out_dir = os.path.abspath(args.out_dir)
  model_dir = os.path.join(out_dir, "model")
  eval_dir = os.path.join(out_dir, "eval")
  if not args.resume and os.path.isdir(model_dir):
    logging.info("demo: removing the previous run in %s (--resume keeps it)",
                 model_dir)
    shutil.rmtree(model_dir)
  shutil.rmtree(eval_dir, ignore_errors=True)
  os.makedirs(out_dir, exist_ok=True)

  backbone = pretrain_backbone(args, gin_args, out_dir)
  if backbone is not None:
    gin_args = list(gin_args) + [
        f"--gin.INITIAL_CHECKPOINT_PATH={backbone['path']!r}",
        "--gin.INITIAL_CHECKPOINT_FALLBACK_TO_SCRATCH=True"]
  # The watchdog stops training with SIGTERM; one that lands outside the
  # trainer's own handler (start-up, compilation) must not kill the demo.
  guard = _SigtermGuard()
  previous = signal.signal(signal.SIGTERM, guard)
  try:
    record = train(args, gin_args, model_dir, start, guard)
  finally:
    signal.signal(signal.SIGTERM, previous)
  t_eval = time.monotonic()
  metrics, model = evaluate(args, model_dir, eval_dir)
  eval_s = time.monotonic() - t_eval

  from tasks import demo  # pylint: disable=g-import-not-at-top
  from tasks import demo_report  # pylint: disable=g-import-not-at-top
  n = max(int(m.get("num_examples", 0)) for m in metrics.values())
  world = world_args()
  baselines = demo.chance_baselines("validation", n=max(n, 1), seed=world.seed,
                                    canvas=world.canvas)
  elapsed = time.monotonic() - start
  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  phases = record["phases"]
  info = {
      "command": "python -m tasks.demo_main " + " ".join(
          sys.argv[1:] if argv is None else argv),
      "training": f"{record['final_step']} steps in {len(phases)} call(s) of "
                  "ofa_jax.train: " + "; ".join(
                      f"planned {p['planned_steps']}, reached {p['reached_step']}, "
                      f"{p['seconds']} s (first step after {p['startup_s']} s, "
                      f"{p['steps_per_s']} steps/s)"
                      + (f", stopped: {p['stopped']}" if p["stopped"] else "")
                      for p in phases),
      "backbone": "not pretrained (--backbone_steps=0)" if backbone is None else
                  f"ResNet pretrained on scene tags and per-patch objects and "
                  f"boxes (tasks/demo_backbone.py): {backbone.get('steps')} steps, "
                  f"{backbone.get('seconds')} s; held out: tag accuracy "
                  f"{backbone.get('tag_accuracy', 0):.3f}, object cells "
                  f"{backbone.get('object_cell_accuracy', 0):.3f}, box edges off by "
                  f"{backbone.get('box_error_px', 0):.1f} px",
      "evaluation": f"{eval_s:.0f} s ({n} validation examples per task)",
      "wall clock before the report": f"{elapsed:.0f} s of a {args.budget_s:.0f} s "
                                      "budget",
      "machine": f"{os.cpu_count()} CPU cores"
                 + (f", load average {load[0]:.2f}" if load else ""),
      "model": describe_model(model, model_dir),
      "gin": " ".join(gin_args) + f" (operative config: `"
             f"{os.path.relpath(model_dir, out_dir)}/config.gin`)",
  }
  path = demo_report.write_report(
      out_dir, metrics=metrics, baselines=baselines, eval_dir=eval_dir,
      train_logdir=os.path.join(model_dir, "train"), run_info=info,
      world_args=world)
  rows = demo_report.metric_rows(metrics, baselines)
  total = time.monotonic() - start
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump({"metrics": metrics, "baselines": baselines, "training": record,
               "backbone": backbone,
               "eval_s": round(eval_s, 1), "total_s": round(total, 1),
               "budget_s": args.budget_s}, f, indent=2, default=str)
  print("\n" + demo_report.text_table(rows))
  print(f"\ndemo: {record['final_step']} training steps, {total:.0f} s in all "
        f"(budget {args.budget_s:.0f} s); report: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
