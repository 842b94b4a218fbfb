"""`make demo`: pretrain the demo ResNet, train, evaluate every task, write the report.

    python -m tasks.demo_main --out_dir=demo_out [--verbose] [--gin.NAME=VALUE ...]

Why a driver around the real entry points and not a loop of its own: the demo is
the proof that `python -m ofa_jax.train --gin_file=experiments/demo.gin` and the
evaluator work end to end, so it calls exactly those (`ofa_jax.train.main`, in
process, and `ofa_jax.evaluation.evaluate_checkpoint`) and only adds the
backbone pretraining before and the report after.

Why a fixed number of steps: `TRAIN_STEPS` in `gin/experiments/demo.gin` is
sized so that the whole command fits well under 20 minutes on two CPU cores, so
the figures of the report are the same from run to run and from machine to
machine (a faster machine only finishes sooner). Override it like any macro:
`--gin.TRAIN_STEPS=20` (what the end-to-end test does).

What the user sees: one line per phase (backbone pretraining, training,
evaluation, report) with its elapsed time and ETA (`tasks/demo_progress.py`),
then the metrics table. The full log is `<out_dir>/demo.log`; `--verbose` also
puts it on the terminal. Everything lands in `--out_dir`: `backbone/`, `model/`
(checkpoints, config.gin, event files), `eval/` (metrics.json, predictions),
`report.md` with its PNGs, `summary.json` and `demo.log`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Optional, Sequence

DEFAULT_GIN_FILE = "experiments/demo.gin"
LOG_FILE = "demo.log"
_GIN_FLAGS_WITH_VALUE = ("--gin_file", "--gin_bindings", "--gin_search_paths")


# ---- what the gin configuration says ----------------------------------------------
def configured_run(gin_args: Sequence[str]) -> dict[str, Any]:
  """The network config, image geometry and step count the training gin sets.

  Parses the same gin files and bindings as the training call (then clears
  them), so the pretrained ResNet has exactly the trained model's shape and sees
  images of the trained resolution, and a misspelt override fails before any
  work.
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
    train_steps = int(gin.query_parameter("%TRAIN_STEPS"))
    batch_size = int(gin.query_parameter("%BATCH_SIZE"))
  finally:
    gin.clear_config()
  return {"config": config, "train_steps": train_steps, "batch_size": batch_size,
          **geometry}


def world_args(split: str = "validation"):
  """(WorldArgs, training examples) the registered demo tasks were made with.

  The seed and canvas redraw the evaluated images; the training count is what
  the blind baselines are fitted on.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import demo  # pylint: disable=g-import-not-at-top
  from tasks import demo_report  # pylint: disable=g-import-not-at-top
  train = demo.DEFAULT_NUM_EXAMPLES["train"]
  try:
    sig = seqio.TaskRegistry.get(demo.task_names()[0]).plan.options["demo_signature"]
    train = int(dict(sig[1]).get("train", train))
    return demo_report.WorldArgs(seed=int(sig[2]), canvas=int(sig[3]),
                                 split=split), train
  except (KeyError, AttributeError, IndexError, TypeError, ValueError):
    return demo_report.WorldArgs(split=split), train


# ---- the four phases ---------------------------------------------------------------
def pretrain_backbone(args: argparse.Namespace, run: dict[str, Any],
                      out_dir: str, phase) -> Optional[dict[str, Any]]:
  """Pretrains the demo ResNet (`tasks.demo_backbone`) into out_dir/backbone.

  None with --backbone_steps=0. With --resume an existing backbone is reused.
  """
  if args.backbone_steps <= 0:
    phase.finish("skipped (--backbone_steps=0)")
    return None
  from ofa_jax import checkpoint_conversion  # pylint: disable=g-import-not-at-top
  from ofa_jax import run_dir  # pylint: disable=g-import-not-at-top
  from tasks import demo_backbone  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, "backbone")
  if args.resume and run_dir.holds_converted_checkpoint(path):
    phase.finish("reused (--resume)")
    return {"path": path, **checkpoint_conversion.load_metadata(path)}
  shutil.rmtree(path, ignore_errors=True)
  figures = demo_backbone.pretrain_backbone(
      run["config"], path, steps=args.backbone_steps,
      batch_size=args.backbone_batch_size, seed=int(run["seed"]),
      canvas=int(run["canvas"]), image_size=int(run["image_size"]),
      on_step=phase.update)
  phase.finish(f"held-out tag accuracy {figures.get('tag_accuracy', 0):.3f}")
  return {"path": path, **figures}


def train_tokenizer(args: argparse.Namespace, run: dict[str, Any],
                    out_dir: str, phase) -> dict[str, Any]:
  """Trains the demo's VQGAN (`tasks.demo_vq`) into out_dir/vqgan, for the
  image-generation tasks. With --resume an existing one is reused."""
  from ofa_jax.model.vqgan import io as vq_io  # pylint: disable=g-import-not-at-top
  from tasks import demo_vq  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, "vqgan")
  if args.resume:
    try:
      vq_io.load_config(path)
      phase.finish("reused (--resume)")
      return {"path": path, **vq_io.load_metadata(path)}
    except (FileNotFoundError, ValueError):
      pass
  shutil.rmtree(path, ignore_errors=True)
  bindings = ([] if args.tokenizer_steps is None
              else [f"TRAIN_STEPS = {int(args.tokenizer_steps)}"])
  figures = demo_vq.train_tokenizer(out_dir, seed=int(run["seed"]),
                                    canvas=int(run["canvas"]),
                                    num_images=args.tokenizer_images,
                                    gin_bindings=bindings, on_step=phase.update)
  phase.finish(f"reconstruction PSNR {figures.get('psnr', 0):.1f} dB, "
               f"{100 * figures.get('codes_used', 0):.0f} % of codes used")
  return figures


def tokenize_images(args: argparse.Namespace, gin_args: Sequence[str],
                    tokenizer: dict[str, Any], out_dir: str, phase
                    ) -> Optional[str]:
  """Caches the image-generation tasks' training examples with their target
  images as VQ codes (`tools/tokenize_images.py`, seqio's offline cache), so
  the train steps need no VQGAN encoder pass. Returns the cache directory."""
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from tasks import demo  # pylint: disable=g-import-not-at-top
  from tools import tokenize_images as tool  # pylint: disable=g-import-not-at-top
  if args.cache_examples <= 0:
    phase.finish("skipped (--cache_examples=0: codes made in the train step)")
    return None
  cache = os.path.join(out_dir, "vq_cache")
  shutil.rmtree(cache, ignore_errors=True)
  files, bindings, paths, _ = gin_utils.parse_argv(
      list(gin_args) + ["--gin.MODEL_DIR='unused'"])
  gin.clear_config()
  gin_utils.parse_gin_flags(files, bindings, paths, finalize=False)
  try:
    gin.get_configurable(demo.register_demo_tasks)()
    done = tool.tokenize(demo.MIXTURE, tokenizer["path"], cache,
                         splits=("train",), batch_size=64,
                         max_examples=args.cache_examples)
  finally:
    gin.clear_config()
  phase.finish(", ".join(f"{t[len(demo.PREFIX):]} {n['train']}"
                         for t, n in done.items())
               + " training examples cached as codes")
  return cache


def train(gin_args: Sequence[str], model_dir: str, phase) -> dict[str, Any]:
  """Runs `ofa_jax.train` in process; returns what the run recorded."""
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import run_dir  # pylint: disable=g-import-not-at-top
  from ofa_jax import train as train_entry  # pylint: disable=g-import-not-at-top
  from tasks import demo_progress  # pylint: disable=g-import-not-at-top

  def progress() -> Optional[tuple[int, int]]:
    record = run_dir.read_progress(model_dir)
    if "step" not in record:
      return None
    return int(record["step"]), int(record["train_steps"])

  gin.clear_config()
  argv = list(gin_args) + [f"--gin.MODEL_DIR={model_dir!r}"]
  t0 = time.monotonic()
  with demo_progress.polling(phase, progress):
    rc = train_entry.main(argv)
  if rc != 0:
    raise RuntimeError(f"demo: ofa_jax.train exited with status {rc} (arguments "
                       f"{argv}); see {LOG_FILE} in the output directory")
  step = run_dir.latest_step(model_dir)
  if step is None:
    raise RuntimeError(f"demo: training left no checkpoint in {model_dir}")
  last = run_dir.read_progress(model_dir)
  record = {"final_step": step, "seconds": round(time.monotonic() - t0, 1),
            "steps_per_s": last.get("steps_per_sec"),
            "final_loss": last.get("loss")}
  phase.update(step)
  phase.finish(f"loss {record['final_loss']:.3f}"
               if isinstance(record["final_loss"], float) else "")
  return record


def evaluate(args: argparse.Namespace, model_dir: str, eval_dir: str, phase
             ) -> tuple[dict[str, dict[str, float]], Any]:
  """Every demo task (or `--eval_tasks`) on the validation split, real evaluator.

  Returns (metrics per task, the model that was evaluated).
  """
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
  from ofa_jax import models  # pylint: disable=g-import-not-at-top
  from ofa_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from tasks import demo  # pylint: disable=g-import-not-at-top
  from tasks import demo_progress  # pylint: disable=g-import-not-at-top
  # The gin configuration of the training call is still parsed: the same
  # network, vocabulary, feature lengths and task registration as training.
  gin.get_configurable(demo.register_demo_tasks)()
  model = gin.get_configurable(models.OFAModel)()
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  name = demo.MIXTURE
  if args.eval_tasks:
    wanted = [t.strip() for t in args.eval_tasks.split(",") if t.strip()]
    known = [t[len(demo.PREFIX):] for t in demo.task_names()]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
      raise ValueError(f"demo: --eval_tasks names unknown tasks {unknown}; the "
                       f"demo tasks are {known}")
    name = "demo_eval_subset"
    plan_lib.register_mixture(name, [(demo.PREFIX + t, 1.0) for t in wanted],
                              replace=True)
  with demo_progress.listening(phase, "evaluation"):
    metrics = evaluation.evaluate_checkpoint(
        model=model, checkpoint_path=model_dir, mixture_or_task_name=name,
        task_feature_lengths=dict(lengths), output_dir=eval_dir,
        batch_size=args.eval_batch_size, split="validation",
        num_examples=args.eval_examples or None)
  n = max(int(m.get("num_examples", 0)) for m in metrics.values())
  phase.finish(f"{len(metrics)} tasks, {n} validation examples each")
  return metrics, model


def describe_model(model: Any, model_dir: str) -> str:
  """Size and shape of the network, for the report."""
  from ofa_jax import run_dir  # pylint: disable=g-import-not-at-top
  c = model.config
  text = (f"d_model {c.d_model}, {c.encoder_layers}+{c.decoder_layers} layers, "
          f"{c.attention_heads} heads, ResNet width {c.resnet_width} "
          f"{tuple(c.resnet_layers)}, vocabulary {c.vocab_size} ids")
  total = run_dir.read_model_info(model_dir).get("total_parameters")
  return f"{int(total):,} parameters; {text}" if total else text


def report(out_dir: str, *, metrics, record, backbone, tokenizer, run, model,
           model_dir,
           eval_dir, eval_s: float, start: float, gin_args: Sequence[str],
           command: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
  """Blind baselines, report.md and its pictures; returns (path, rows, baselines)."""
  from ofa_jax import run_dir  # pylint: disable=g-import-not-at-top
  from tasks import demo  # pylint: disable=g-import-not-at-top
  from tasks import demo_report  # pylint: disable=g-import-not-at-top
  n = max(int(m.get("num_examples", 0)) for m in metrics.values())
  world, train_examples = world_args()
  baselines = demo.chance_baselines("validation", n=max(n, 1), seed=world.seed,
                                    canvas=world.canvas,
                                    train_examples=train_examples)
  if tokenizer is not None:
    from tasks import demo_judge  # pylint: disable=g-import-not-at-top
    for task, figures in demo_judge.image_baselines(
        tokenizer["path"], max(n, 1), seed=world.seed,
        canvas=world.canvas).items():
      baselines.setdefault(task, {}).update(figures)
  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  rate = record.get("steps_per_s")
  info = {
      "command": command,
      "training": f"{record['final_step']} steps of batch {run['batch_size']} "
                  f"(TRAIN_STEPS {run['train_steps']}) in {record['seconds']:.0f} s"
                  + (f", {rate:.2f} steps/s after compilation" if rate else ""),
      "backbone": "not pretrained (--backbone_steps=0)" if backbone is None else
                  f"ResNet pretrained on scene tags and per-patch objects and "
                  f"boxes (tasks/demo_backbone.py): {backbone.get('steps')} steps, "
                  f"{backbone.get('seconds')} s; held out: tag accuracy "
                  f"{backbone.get('tag_accuracy', 0):.3f}, object cells "
                  f"{backbone.get('object_cell_accuracy', 0):.3f}, box edges off by "
                  f"{backbone.get('box_error_px', 0):.1f} px",
      "image tokenizer": None if tokenizer is None else
                         f"VQGAN (gin/vq/demo.gin, tasks/demo_vq.py): "
                         f"{tokenizer.get('steps')} steps on "
                         f"{tokenizer.get('images')} pictures; reconstruction "
                         f"PSNR {tokenizer.get('psnr', 0):.1f} dB, "
                         f"{100 * tokenizer.get('codes_used', 0):.0f} % of codes used",
      "evaluation": f"{eval_s:.0f} s ({n} validation examples per task)",
      "wall clock before the report": f"{time.monotonic() - start:.0f} s",
      "machine": f"{os.cpu_count()} CPU cores"
                 + (f", load average {load[0]:.2f}" if load else ""),
      "model": describe_model(model, model_dir),
      "gin": " ".join(gin_args) + f" (operative config: `"
             f"{os.path.relpath(model_dir, out_dir)}/config.gin`)",
  }
  path = demo_report.write_report(
      out_dir, metrics=metrics, baselines=baselines, eval_dir=eval_dir,
      train_logdir=run_dir.train_logdir(model_dir), run_info=info,
      world_args=world)
  return path, demo_report.metric_rows(metrics, baselines), baselines


# ---- main ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(
      prog="python -m tasks.demo_main",
      description="Pretrain the demo ResNet, train the demo preset on the demo "
      "mixture for TRAIN_STEPS (gin/experiments/demo.gin), evaluate every task, "
      "write report.md. Other arguments (--gin_file, --gin_bindings, "
      "--gin.NAME=VALUE, e.g. --gin.TRAIN_STEPS=20) go to ofa_jax.train.")
  p.add_argument("--out_dir", default="demo_out")
  p.add_argument("--eval_examples", type=int, default=100,
                 help="validation examples per task (0: the whole split)")
  p.add_argument("--eval_batch_size", type=int, default=100)
  p.add_argument("--eval_tasks", default="",
                 help="comma-separated short task names (default: all)")
  p.add_argument("--backbone_steps", type=int, default=300,
                 help="steps of ResNet pretraining before training (OFA starts "
                 "from a pretrained ResNet; 0: train the backbone from scratch)")
  p.add_argument("--backbone_batch_size", type=int, default=64)
  p.add_argument("--tokenizer_steps", type=int, default=None,
                 help="steps of the demo VQGAN's training (default: "
                 "TRAIN_STEPS of gin/vq/demo.gin)")
  p.add_argument("--tokenizer_images", type=int, default=2000,
                 help="scenes written as PNG files for the VQGAN's training")
  p.add_argument("--cache_examples", type=int, default=1500,
                 help="training examples of each image-generation task "
                 "tokenized offline (0: tokenize in the train step instead)")
  p.add_argument("--resume", action="store_true",
                 help="continue the run in out_dir/model instead of starting over")
  p.add_argument("--verbose", action="store_true",
                 help="every library's log lines on the terminal too (they are "
                 f"always in <out_dir>/{LOG_FILE})")
  args, rest = p.parse_known_args(list(argv))
  bad = [a for i, a in enumerate(rest) if not a.startswith("--gin") and not (
      i > 0 and rest[i - 1] in _GIN_FLAGS_WITH_VALUE)]
  if bad:
    p.error(f"unrecognized arguments {bad}")
  if args.eval_batch_size <= 0 or args.eval_examples < 0:
    p.error("--eval_batch_size must be positive and --eval_examples >= 0")
  if not any(a.startswith("--gin_file") for a in rest):
    rest = [f"--gin_file={DEFAULT_GIN_FILE}"] + rest
  return args, rest


def main(argv: Optional[Sequence[str]] = None) -> int:
  start = time.monotonic()
  argv = list(sys.argv[1:] if argv is None else argv)
  args, gin_args = parse_args(argv)
  out_dir = os.path.abspath(args.out_dir)
  model_dir = os.path.join(out_dir, "model")
  eval_dir = os.path.join(out_dir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  log_file = os.path.join(out_dir, LOG_FILE)
  if not args.resume and os.path.exists(log_file):
    os.remove(log_file)
  # Before anything imports TensorFlow: its C++ log level is read then.
  from ofa_jax import log_setup  # pylint: disable=g-import-not-at-top
  log_setup.configure(["--verbose"] if args.verbose else [],
                      console_level=logging.WARNING, library_level=logging.ERROR,
                      log_file=log_file)
  from tasks import demo_progress  # pylint: disable=g-import-not-at-top
  from tasks import demo_report  # pylint: disable=g-import-not-at-top

  def line(name: str, unit: str = "step") -> demo_progress.Phase:
    # With --verbose the log shares the terminal: plain lines, no rewriting.
    return demo_progress.Phase(name, unit,
                               interactive=False if args.verbose else None)

  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  try:  # a misspelt --gin.NAME= fails here, before any work or deletion
    run = configured_run(gin_args)
  except (gin_utils.GinConfigError, ValueError) as e:
    print(f"demo: configuration error: {e}", file=sys.stderr)
    return 2
  if not args.resume and os.path.isdir(model_dir):
    logging.info("demo: removing the previous run in %s (--resume keeps it)",
                 model_dir)
    shutil.rmtree(model_dir)
  shutil.rmtree(eval_dir, ignore_errors=True)

  backbone = pretrain_backbone(args, run, out_dir, line("backbone"))
  if backbone is not None:
    gin_args = list(gin_args) + [
        f"--gin.INITIAL_CHECKPOINT_PATH={backbone['path']!r}",
        "--gin.INITIAL_CHECKPOINT_FALLBACK_TO_SCRATCH=True"]
  tokenizer = train_tokenizer(args, run, out_dir, line("tokenizer"))
  gin_args = list(gin_args) + [f"--gin.VQGAN_DIR={tokenizer['path']!r}"]
  cache = tokenize_images(args, gin_args, tokenizer, out_dir, line("codes", ""))
  if cache is not None:
    gin_args += ["--gin.USE_CACHED_TASKS=True", f"--gin.CACHE_DIRS=[{cache!r}]"]
  training = line("training")
  training.update(0, run["train_steps"])
  record = train(gin_args, model_dir, training)
  t_eval = time.monotonic()
  metrics, model = evaluate(args, model_dir, eval_dir, line("evaluation", "task"))
  eval_s = time.monotonic() - t_eval

  writing = line("report", "")
  path, rows, baselines = report(
      out_dir, metrics=metrics, record=record, backbone=backbone,
      tokenizer=tokenizer, run=run,
      model=model, model_dir=model_dir, eval_dir=eval_dir, eval_s=eval_s,
      start=start, gin_args=gin_args,
      command="python -m tasks.demo_main " + " ".join(argv))
  total = time.monotonic() - start
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump({"metrics": metrics, "baselines": baselines,
               "training": {**record, "train_steps": run["train_steps"],
                            "batch_size": run["batch_size"]},
               "backbone": backbone, "tokenizer": tokenizer,
               "eval_s": round(eval_s, 1),
               "total_s": round(total, 1)}, f, indent=2, default=str)
  writing.finish(os.path.relpath(path))
  print("\n" + demo_report.text_table(rows))
  print(f"\ndemo: {record['final_step']} training steps, {total:.0f} s in all; "
        f"report: {path}; full log: {log_file}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
