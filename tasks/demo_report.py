"""The `make demo` report: metrics next to chance, training curves, prediction pictures.

Why a separate module: the driver (`tasks/demo_main.py`) decides *what* runs;
this module only turns what a run left on disk (the evaluator's
`<task>_predictions.jsonl`, the trainer's event files) into `report.md` and
PNGs, so it can be re-run on any finished run and tested without training.

Pictures are redrawn from the generated world: an evaluation row's `index` is
the position of the example in the unshuffled validation split, which is
`demo_world.example(kind, index, split=...)`. Each drawn example is checked
against the evaluator's target first; a task whose rows do not match the world
is left out of the pictures (and says so) rather than drawn on the wrong image.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import textwrap
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from tasks import demo_world as world

# The headline metric of each task (the one its chance baseline is given for),
# and the targets of issue 4 (percent).
PRIMARY = {"caption": "cider", "vqa": "vqa_score", "grounding": "iou_acc",
           "grounded_caption": "cider", "classify": "accuracy",
           "matching": "accuracy", "detection": "f1", "sudoku": "solved",
           "infilling": "exact_match", "text_to_image": "picture_match",
           "image_infilling": "picture_match"}
TARGETS = {"classify": 90.0, "matching": 90.0, "vqa": 90.0, "grounding": 70.0}
IMAGE_KINDS = ("caption", "vqa", "grounding", "grounded_caption", "classify",
               "matching", "detection")
TEXT_KINDS = ("sudoku", "infilling")
# Tasks that generate images (their rows name PNG files the evaluator wrote).
GENERATION_KINDS = ("text_to_image", "image_infilling")
# What the "chance" column is (`tasks/demo_baselines.py` computes it).
BASELINE_TEXT = (
    "the same metric, on the same validation examples, for the best predictor "
    "that does not see the image, fitted on the training split: the commonest "
    "training answer to the same question (VQA), the training box that best fits "
    "the same text (grounding), the commonest training label, caption, object or "
    "sentence (the other tasks; for a closed set at least a uniform guess), the "
    "blanks filled at random (sudoku)")
IMAGE_JUDGE_TEXT = (
    "Each picture shows one object whose colour and shape the caption names "
    "(24 possible pictures); a generated image is judged by the picture whose "
    "rendering it is nearest to (tasks/demo_judge.py): picture_match = that "
    "picture is the reference's, colour_match / shape_match = that attribute "
    "is. Chance = the commonest training picture; *_random_codes = "
    "images decoded from random codes; *_ceiling = the VQGAN's reconstructions "
    "of the references (the best any codes reach through this tokenizer)")
PREFIX = "demo_"
TILE = 192  # pixels of one upscaled image in a prediction sheet
GOLD, PRED = (20, 160, 40), (220, 20, 60)


@dataclasses.dataclass(frozen=True)
class WorldArgs:
  """How the evaluated examples were generated (to redraw their images)."""
  seed: int = 0
  canvas: int = 64
  split: str = "validation"


def short_name(task: str) -> str:
  return task[len(PREFIX):] if task.startswith(PREFIX) else task


# ---- metrics table -------------------------------------------------------------
def metric_rows(metrics: Mapping[str, Mapping[str, Any]],
                baselines: Mapping[str, Mapping[str, float]]
                ) -> list[dict[str, Any]]:
  """One row per task: headline metric, chance baseline, target, eval loss."""
  rows = []
  for task in sorted(metrics, key=lambda t: (list(PRIMARY).index(short_name(t))
                                             if short_name(t) in PRIMARY else 99, t)):
    name = short_name(task)
    values = metrics[task]
    key = PRIMARY.get(name)
    if key not in values:  # an unknown task: its first numeric metric
      key = next((k for k, v in values.items() if isinstance(v, (int, float))
                  and not k.startswith("eval_") and k != "num_examples"), None)
    base = baselines.get(name, {}).get(key) if key else None
    value = values.get(key) if key else None
    target = TARGETS.get(name)
    rows.append({
        "task": name, "metric": key or "-", "value": value, "chance": base,
        "target": target,
        "met": None if target is None or value is None else value >= target,
        "eval_loss": values.get("eval_loss"),
        "num_examples": values.get("num_examples"),
        "others": {k: v for k, v in values.items() if k not in (
            key, "eval_loss", "eval_token_accuracy", "num_examples")},
    })
  return rows


def _fmt(value: Any, digits: int = 1) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, (int, float, np.floating)):
    return f"{float(value):.{digits}f}"
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  lines = ["| task | metric | result | chance | target | met | eval loss | n "
           "| other metrics |", "|---|---|---:|---:|---:|:-:|---:|---:|---|"]
  for r in rows:
    others = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(r["others"].items())
                       if isinstance(v, (int, float)))
    met = "" if r["met"] is None else ("✓" if r["met"] else "✗")
    lines.append(
        f"| {r['task']} | {r['metric']} | {_fmt(r['value'])} | "
        f"{_fmt(r['chance'])} | {_fmt(r['target'], 0)} | {met} | "
        f"{_fmt(r['eval_loss'], 3)} | {_fmt(r['num_examples'], 0)} | {others} |")
  return "\n".join(lines)


def text_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The same table for the terminal."""
  out = [f"{'task':<17}{'metric':<12}{'result':>8}{'chance':>8}{'target':>8}  met"]
  for r in rows:
    met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
    out.append(f"{r['task']:<17}{r['metric']:<12}{_fmt(r['value']):>8}"
               f"{_fmt(r['chance']):>8}{_fmt(r['target'], 0):>8}  {met}")
  return "\n".join(out)


# ---- training curves -------------------------------------------------------------
def _dedupe(points: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
  """Sorted by step; a step logged twice (a resumed phase) keeps its last value."""
  by_step = {}
  for s, v in points:
    by_step[int(s)] = float(v)
  steps = np.array(sorted(by_step))
  return steps, np.array([by_step[s] for s in steps])


def plot_curves(scalars: Mapping[str, Sequence[tuple[int, float]]], path: str
                ) -> str:
  """Loss (total and per task) and per-task token accuracy against the step."""
  if "loss" not in scalars or not scalars["loss"]:
    raise ValueError(f"plot_curves: no 'loss' scalar among {sorted(scalars)}")
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.8))
  tasks = sorted({k.split("/")[0] for k in scalars if "/" in k})
  colours = plt.get_cmap("tab10")
  for i, task in enumerate(tasks):
    for key, ax in ((f"{task}/loss", ax_loss), (f"{task}/accuracy", ax_acc)):
      if scalars.get(key):
        s, v = _dedupe(scalars[key])
        ax.plot(s, v, color=colours(i % 10), lw=1.2, label=short_name(task))
  s, v = _dedupe(scalars["loss"])
  ax_loss.plot(s, v, color="black", lw=2.2, label="total")
  ax_loss.set_yscale("log")
  ax_loss.set_title("training loss (label-smoothed cross-entropy)")
  ax_acc.set_title("training token accuracy per task")
  for ax in (ax_loss, ax_acc):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  ax_loss.legend(fontsize=7, ncol=2)
  if ax_acc.lines:
    ax_acc.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ---- prediction pictures -----------------------------------------------------------
def read_predictions(eval_dir: str) -> dict[str, list[dict[str, Any]]]:
  """{short task name: rows} of every `<task>_predictions.jsonl` in `eval_dir`."""
  from ofa_jax import run_dir  # pylint: disable=g-import-not-at-top
  out = {}
  for task, path in run_dir.prediction_files(eval_dir).items():
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    out[short_name(task)] = rows
  return out


def _box(value: Any) -> Optional[tuple[float, float, float, float]]:
  try:
    arr = np.asarray(value, np.float64).reshape(-1)
  except (TypeError, ValueError):
    return None
  if arr.shape != (4,) or not np.all(np.isfinite(arr)):
    return None
  return tuple(float(x) for x in arr)  # type: ignore[return-value]


def _objects(value: Any) -> list[tuple[tuple[float, float, float, float], str]]:
  out = []
  if isinstance(value, (list, tuple)):
    for item in value:
      if isinstance(item, (list, tuple)) and len(item) == 2:
        box = _box(item[0])
        if box is not None:
          out.append((box, str(item[1])))
  return out


def _matches_world(kind: str, row: Mapping[str, Any], ex: Mapping[str, Any]) -> bool:
  """Whether the evaluator's target is the world example's (same image)."""
  target = row.get("target")
  if kind in ("caption", "grounded_caption"):
    return str(target).strip() == ex["cap"]
  if kind == "vqa":
    return str(target).strip() == ex["answer"]
  if kind in ("classify", "matching"):
    return str(target).strip() == ex["label"]
  if kind == "grounding":
    box = _box(target)
    return box is not None and np.allclose(box, ex["region"], atol=1.5)
  if kind == "detection":
    gold = _objects(target)
    return len(gold) == len(ex["labels"]) and all(
        label == want.decode() for (_, label), want in zip(gold, ex["labels"]))
  return False


def _question(kind: str, ex: Mapping[str, Any]) -> str:
  if kind == "vqa":
    return f"Q: {ex['question']}"
  if kind == "matching":
    return f"\"{ex['cap']}\"?"
  if kind == "grounding":
    return f"find: {ex['cap']}"
  if kind == "grounded_caption":
    return "region (green):"
  return ""


def _tile(kind: str, row: Mapping[str, Any], ex: Mapping[str, Any],
          canvas: int) -> Image.Image:
  image = Image.open(io.BytesIO(ex["img"])).convert("RGB")
  image = image.resize((TILE, TILE), Image.NEAREST)
  draw = ImageDraw.Draw(image)
  scale = TILE / float(canvas)

  def rect(box, colour):
    x0, y0, x1, y1 = (v * scale for v in box)
    draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                   outline=colour, width=2)

  pred = row.get("prediction")
  if kind == "grounding":
    rect(ex["region"], GOLD)
    if _box(pred) is not None:
      rect(_box(pred), PRED)
  elif kind == "grounded_caption":
    rect(ex["region"], GOLD)
  elif kind == "detection":
    for box, label in _objects(pred):
      rect(box, PRED)
      x0, y0 = min(box[0], box[2]) * scale, min(box[1], box[3]) * scale
      draw.text((x0 + 2, y0 + 1), label, fill=PRED)
  if kind in ("grounding", "detection"):
    if kind == "grounding":
      from ofa_jax.metrics import grounding  # pylint: disable=g-import-not-at-top
      box = _box(pred)
      iou = grounding.box_iou(box, ex["region"]) if box is not None else 0.0
      shown = f"IoU {iou:.2f} (pred red, gold green)"
    else:
      shown = f"{len(_objects(pred))} predicted / {len(ex['labels'])} true"
    lines = [_question(kind, ex), shown] if kind == "grounding" else [shown]
  else:
    lines = [_question(kind, ex), f"pred: {pred}", f"true: {row.get('target')}"]
  wrapped = [w for line in lines if line for w in textwrap.wrap(line, 31)][:6]
  tile = Image.new("RGB", (TILE, TILE + 12 * 6 + 4), "white")
  tile.paste(image, (0, 0))
  tdraw = ImageDraw.Draw(tile)
  for i, line in enumerate(wrapped):
    colour = PRED if line.startswith("pred:") else (0, 0, 0)
    tdraw.text((3, TILE + 2 + 12 * i), line, fill=colour)
  return tile


def draw_predictions(predictions: Mapping[str, Sequence[Mapping[str, Any]]],
                     out_dir: str, world_args: WorldArgs = WorldArgs(), *,
                     per_task: int = 8, columns: int = 4
                     ) -> tuple[dict[str, str], dict[str, str]]:
  """One PNG sheet per image task; returns ({task: path}, {task: why skipped})."""
  paths, skipped = {}, {}
  for kind in IMAGE_KINDS:
    rows = list(predictions.get(kind, ()))[:per_task]
    if not rows:
      continue
    tiles = []
    for row in rows:
      ex = world.example(kind, int(row["index"]), seed=world_args.seed,
                         split=world_args.split, canvas=world_args.canvas)
      if not _matches_world(kind, row, ex):
        skipped[kind] = (f"row {row['index']} does not match the generated world "
                         f"(target {row.get('target')!r})")
        tiles = []
        break
      tiles.append(_tile(kind, row, ex, world_args.canvas))
    if not tiles:
      continue
    width, height = tiles[0].size
    n_rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (width + 6), n_rows * (height + 6)),
                      (230, 230, 230))
    for i, tile in enumerate(tiles):
      sheet.paste(tile, ((i % columns) * (width + 6), (i // columns) * (height + 6)))
    path = os.path.join(out_dir, f"predictions_{kind}.png")
    os.makedirs(out_dir, exist_ok=True)
    sheet.save(path)
    paths[kind] = path
  for kind, why in skipped.items():
    logging.warning("demo report: no pictures for %s: %s", kind, why)
  return paths, skipped


def draw_generations(predictions: Mapping[str, Sequence[Mapping[str, Any]]],
                     eval_dir: str, out_dir: str, *, per_task: int = 8
                     ) -> dict[str, str]:
  """One sheet per image-generation task: the reference (left) beside the
  generated image (right) of each example, the request written under them."""
  paths = {}
  for kind in GENERATION_KINDS:
    rows = [r for r in predictions.get(kind, ()) if r.get("prediction")][:per_task]
    tiles = []
    for row in rows:
      pair = []
      for key in ("target", "prediction"):
        file = row.get(key)
        image = (Image.open(os.path.join(eval_dir, file)).convert("RGB")
                 if file and os.path.exists(os.path.join(eval_dir, file))
                 else Image.new("RGB", (64, 64), (200, 200, 200)))
        pair.append(image.resize((TILE // 2, TILE // 2), Image.NEAREST))
      tile = Image.new("RGB", (TILE + 4, TILE // 2 + 36), (255, 255, 255))
      tile.paste(pair[0], (0, 0))
      tile.paste(pair[1], (TILE // 2 + 4, 0))
      draw = ImageDraw.Draw(tile)
      request = str(row.get("inputs", "")).split("caption:", 1)[-1].strip()
      for k, text_line in enumerate(textwrap.wrap(request, 34)[:2]):
        draw.text((2, TILE // 2 + 4 + 14 * k), text_line, fill=(0, 0, 0))
      tiles.append(tile)
    if not tiles:
      continue
    width, height = tiles[0].size
    columns = 4
    n_rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (width + 6), n_rows * (height + 6)),
                      (230, 230, 230))
    for i, tile in enumerate(tiles):
      sheet.paste(tile, ((i % columns) * (width + 6), (i // columns) * (height + 6)))
    path = os.path.join(out_dir, f"generated_{kind}.png")
    os.makedirs(out_dir, exist_ok=True)
    sheet.save(path)
    paths[kind] = path
  return paths


def _cell(value: Any) -> str:
  text = value if isinstance(value, str) else json.dumps(value)
  return text.replace("|", "\\|").replace("\n", " ")


def text_examples(predictions: Mapping[str, Sequence[Mapping[str, Any]]],
                  n: int = 4) -> str:
  """Markdown tables of a few text-only predictions (sudoku, infilling)."""
  parts = []
  for kind in TEXT_KINDS:
    rows = list(predictions.get(kind, ()))[:n]
    if not rows:
      continue
    parts.append(f"**{kind}**\n\n| input | prediction | target |\n|---|---|---|")
    for r in rows:
      target = r.get("target")
      if isinstance(target, Mapping) and "solution" in target:
        target = target["solution"]
      parts.append(f"| {_cell(r.get('inputs'))} | {_cell(r.get('prediction'))} "
                   f"| {_cell(target)} |")
    parts.append("")
  return "\n".join(parts)


# ---- VQA by question type -----------------------------------------------------------
def vqa_type_table(rows: Sequence[Mapping[str, Any]],
                   baseline: Optional[Mapping[str, Mapping[str, float]]],
                   world_args: WorldArgs = WorldArgs()) -> str:
  """Markdown: the model's VQA score per question type next to the blind one.

  Why: the question type alone sets what a blind predictor gets (about half
  of yes/no questions, a sixth of colour questions), so one overall figure can
  hide a model that learned the answer types and not the images. "" when
  there is nothing to compare or the rows are not the world's examples.
  """
  if not rows or not baseline:
    return ""
  from tasks import demo_baselines  # pylint: disable=g-import-not-at-top
  questions, targets, predicted = [], [], []
  for row in rows:
    ex = world.example("vqa", int(row["index"]), seed=world_args.seed,
                       split=world_args.split, canvas=world_args.canvas,
                       images=False)
    if not _matches_world("vqa", row, ex):
      return ""
    questions.append(ex["question"])
    targets.append(row.get("target"))
    predicted.append("" if row.get("prediction") is None
                     else str(row["prediction"]))
  model = demo_baselines.vqa_by_type(questions, targets, predicted)
  lines = ["| question type | n | result | chance (question only) |",
           "|---|---:|---:|---:|"]
  for kind, scores in model.items():
    lines.append(f"| {kind} | {scores['num_examples']} | "
                 f"{_fmt(scores['vqa_score'])} | "
                 f"{_fmt(baseline.get(kind, {}).get('vqa_score'))} |")
  return "\n".join(lines)


# ---- the report ---------------------------------------------------------------------
def write_report(out_dir: str, *, metrics: Mapping[str, Mapping[str, Any]],
                 baselines: Mapping[str, Mapping[str, float]],
                 eval_dir: str, train_logdir: Optional[str],
                 run_info: Mapping[str, Any],
                 world_args: WorldArgs = WorldArgs()) -> str:
  """Writes `<out_dir>/report.md` (+ curves and prediction PNGs); returns its path.

  `run_info` is shown as is (timings, steps, machine); keys with None are skipped.
  """
  os.makedirs(out_dir, exist_ok=True)
  rows = metric_rows(metrics, baselines)
  lines = ["# ofa_jax demo report", ""]
  lines += [f"- **{k}**: {v}" for k, v in run_info.items() if v is not None]
  lines += ["", "## Metrics (validation split, percent)", "",
            "Chance = " + BASELINE_TEXT + ".", "",
            markdown_table(rows), ""]
  predictions = read_predictions(eval_dir) if os.path.isdir(eval_dir) else {}
  by_type = vqa_type_table(predictions.get("vqa", ()),
                           baselines.get("vqa", {}).get("by_type"), world_args)
  if by_type:
    lines += ["### VQA by question type", "", by_type, ""]
  curves = None
  if train_logdir and os.path.isdir(train_logdir):
    from ofa_jax import trainer  # pylint: disable=g-import-not-at-top
    scalars = trainer.read_scalars(train_logdir)
    if scalars.get("loss"):
      curves = plot_curves(scalars, os.path.join(out_dir, "training_curves.png"))
  lines += ["## Training curves", ""]
  lines += ([f"![training curves]({os.path.basename(curves)})", ""] if curves
            else ["(no training scalars were found)", ""])
  pictures, skipped = draw_predictions(predictions, out_dir, world_args)
  lines += ["## Predictions", "",
            "The first validation examples of each task: gold boxes green, "
            "predicted boxes and answers red.", ""]
  for kind, path in pictures.items():
    lines += [f"### {kind}", "", f"![{kind}]({os.path.basename(path)})", ""]
  for kind, why in skipped.items():
    lines += [f"- {kind}: no pictures ({why})"]
  generated = draw_generations(predictions, eval_dir, out_dir)
  if generated:
    lines += ["### generated images", "",
              "Reference (left) and generated image (right), decoded from the "
              "sampled VQ codes by the demo's VQGAN; the request under them "
              "(text-to-image: the caption). " + IMAGE_JUDGE_TEXT, ""]
    for kind, path in generated.items():
      lines += [f"#### {kind}", "", f"![{kind}]({os.path.basename(path)})", ""]
    for kind in generated:
      base = baselines.get(kind, {})
      ceiling = {k: v for k, v in base.items() if k.endswith(("_ceiling",
                                                              "_random_codes"))}
      if ceiling:
        lines += [f"- {kind}: " + ", ".join(f"{k} {_fmt(v)}"
                                            for k, v in ceiling.items())]
    lines += [""]
  text = text_examples(predictions)
  if text:
    lines += ["### text tasks", "", text]
  lines += ["", f"Predictions of every example: `{os.path.relpath(eval_dir, out_dir)}"
            "/<task>_predictions.jsonl`; metrics: `metrics.json` there."]
  path = os.path.join(out_dir, "report.md")
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(path + ".tmp", path)
  return path
