"""What a run directory holds, and the one place that knows where each thing lies.

Why one owner: the trainer writes a directory that the evaluator, the Python API,
the inference entry point, the checkpoint converter and the demo all read. When
each of them spells the file names itself, a rename in one place silently breaks
another (a loader that finds no `model_config.json` falls back to guessing). So
every path below is built here, and every structured fact another program needs
(the parameter count, the training progress) is a JSON file written here, never a
line of text to be parsed back.

A training run directory (`MODEL_DIR`):

    config.gin, config_full.gin  the operative and the full gin config
    model_config.json            network, vocabulary, task options (`Generalist.load`)
    model-info.txt               the parameter layout, for people
    model_info.json              the same facts, for programs (`read_model_info`)
    progress.json                the last logged step, loss and rate (`read_progress`)
    train/                       event files of the training scalars
    <step>/{state,data,meta}     orbax checkpoints, one folder per saved step
    damaged/<step>               steps found unreadable on a restart, moved aside
                                 (kept for inspection; `damaged_checkpoint_dir`)
    eval/<step>/                 in-training evaluation outputs (see below)

An evaluation or inference output directory: `metrics.json` and one
`<task>_predictions.jsonl` (evaluation) or `<task>_inferences.jsonl` (inference)
per task, plus the run's `config.gin`.

A converted OFA checkpoint (`tools/convert_ofa_checkpoint.py`): `checkpoint/`
(orbax `{"params", "batch_stats"}`), `conversion.json`, `model_config.json` and,
when given, OFA's BPE files (`encoder.json`, `vocab.bpe`, `dict.txt`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping, Optional

CONFIG_GIN = "config.gin"
CONFIG_FULL_GIN = "config_full.gin"
MODEL_CONFIG = "model_config.json"
MODEL_INFO_TEXT = "model-info.txt"
MODEL_INFO = "model_info.json"
PROGRESS = "progress.json"
TRAIN_LOGDIR = "train"
EVAL_DIR = "eval"
METRICS = "metrics.json"
PREDICTIONS = "predictions"
INFERENCES = "inferences"
# Items of one orbax step folder (`<MODEL_DIR>/<step>/<item>`).
STATE, DATA, META = "state", "data", "meta"
DAMAGED = "damaged"
# A converted checkpoint.
CONVERTED_CHECKPOINT = "checkpoint"
CONVERSION = "conversion.json"
BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")
# `ofa_bpe_vocabulary`'s argument for each BPE file.
BPE_ARGS = dict(zip(("encoder_json", "vocab_bpe", "dict_txt"), BPE_FILES))


# ---- JSON files ---------------------------------------------------------------
def write_json(path: str, payload: Mapping[str, Any]) -> str:
  """Writes `payload` atomically (a reader never sees half a file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=list)
  os.replace(path + ".tmp", path)
  return path


def read_json(path: str) -> Optional[dict[str, Any]]:
  """The JSON object at `path`, None when there is no such file."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


# ---- configuration ------------------------------------------------------------
def config_gin(directory: str) -> str:
  return os.path.join(directory, CONFIG_GIN)


def config_full_gin(directory: str) -> str:
  return os.path.join(directory, CONFIG_FULL_GIN)


def gin_configs(directory: str) -> list[str]:
  """The gin configs a run left, the operative one first (for readers)."""
  return [config_gin(directory), config_full_gin(directory)]


def model_config(directory: str) -> str:
  return os.path.join(directory, MODEL_CONFIG)


# ---- facts the trainer records ------------------------------------------------------
def write_model_info(directory: str, text: str, info: Mapping[str, Any]) -> None:
  """`model-info.txt` (`text`, for people) and `model_info.json` (`info`)."""
  with open(os.path.join(directory, MODEL_INFO_TEXT), "w") as f:
    f.write(text)
  write_json(os.path.join(directory, MODEL_INFO), info)


def read_model_info(directory: str) -> dict[str, Any]:
  """What `write_model_info` recorded ({} for a run that recorded nothing)."""
  return read_json(os.path.join(directory, MODEL_INFO)) or {}


def write_progress(directory: str, progress: Mapping[str, Any]) -> None:
  write_json(os.path.join(directory, PROGRESS), progress)


def read_progress(directory: str) -> dict[str, Any]:
  """The trainer's last progress record ({} before the first one)."""
  return read_json(os.path.join(directory, PROGRESS)) or {}


def train_logdir(directory: str) -> str:
  return os.path.join(directory, TRAIN_LOGDIR)


# ---- evaluation outputs -------------------------------------------------------
def eval_dir(directory: str, step: int) -> str:
  """Where the in-training evaluation at `step` writes."""
  return os.path.join(directory, EVAL_DIR, str(int(step)))


def metrics_file(out_dir: str) -> str:
  return os.path.join(out_dir, METRICS)


def predictions_file(out_dir: str, task: str, kind: str = PREDICTIONS) -> str:
  """`<out_dir>/<task>_<kind>.jsonl` (kind: PREDICTIONS or INFERENCES)."""
  return os.path.join(out_dir, f"{task}_{kind}.jsonl")


def prediction_files(out_dir: str, kind: str = PREDICTIONS) -> dict[str, str]:
  """{task: path} of every `predictions_file` in `out_dir`."""
  suffix = f"_{kind}.jsonl"
  return {name[:-len(suffix)]: os.path.join(out_dir, name)
          for name in sorted(os.listdir(out_dir)) if name.endswith(suffix)}


# ---- checkpoints ---------------------------------------------------------------
def steps(directory: str) -> list[int]:
  """The step folders of a training run, in order ([] when none)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def damaged_checkpoint_dir(directory: str, step: int) -> str:
  """A free path under `directory`/damaged/ for an unreadable step folder.

  Outside the step folders (their names are digits), so neither orbax nor
  `steps` counts it, and a later save of the same step number finds the place
  free; `<step>.<n>` when that step was moved aside before.
  """
  base = os.path.join(directory, DAMAGED, str(step))
  path, n = base, 1
  while os.path.exists(path):
    path, n = f"{base}.{n}", n + 1
  return path


def latest_step(directory: str) -> Optional[int]:
  found = steps(directory)
  return found[-1] if found else None


def checkpoint_step(path: str) -> Optional[int]:
  """The step of a checkpoint path: a step folder, or a MODEL_DIR's latest."""
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit():
    return int(base)
  return latest_step(path)


def model_dirs(path: str) -> list[str]:
  """`path` and, for a step folder (`MODEL_DIR/123`), its MODEL_DIR.

  Why: a step folder holds the arrays, its run directory the files that say
  which network they belong to.
  """
  path = os.path.abspath(path)
  dirs = [path]
  if os.path.basename(path).isdigit():
    dirs.append(os.path.dirname(path))
  return dirs


def converted_checkpoint(directory: str) -> str:
  return os.path.join(directory, CONVERTED_CHECKPOINT)


def holds_converted_checkpoint(directory: str) -> bool:
  return os.path.isdir(converted_checkpoint(directory))


def conversion_file(directory: str) -> str:
  return os.path.join(directory, CONVERSION)


def looks_like_checkpoint(path: str) -> bool:
  """A cheap check before orbax, whose error on an empty folder is obscure."""
  if not os.path.isdir(path):
    return False
  return any(n.isdigit() or n in (STATE, CONVERTED_CHECKPOINT)
             or n.startswith("_") or n.startswith("manifest")
             for n in os.listdir(path))


def resolve_checkpoint(path: str, collection: str
                       ) -> tuple[str, Optional[tuple[str, ...]]]:
  """(orbax directory, key path of `collection` inside it) of a checkpoint path.

  Accepts a training `MODEL_DIR` (its latest step), one step folder of it, a
  converted checkpoint (`{"params", "batch_stats"}` under `checkpoint/`), or an
  orbax directory itself (key path None: the tree is the collection).
  Raises FileNotFoundError when `path` is not a directory.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  in_state = (collection,) if collection == "params" else ("model_state",
                                                           collection)
  if holds_converted_checkpoint(path):
    return converted_checkpoint(path), (collection,)
  if os.path.isdir(os.path.join(path, STATE)):
    return os.path.join(path, STATE), in_state
  latest = latest_step(path)
  if latest is not None:
    return os.path.join(path, str(latest), STATE), in_state
  return path, None


# ---- vocabulary files -------------------------------------------------------------
def copy_bpe_files(source_dir: str, directory: str) -> list[str]:
  """Copies OFA's three BPE files into `directory`; all three must exist."""
  missing = [f for f in BPE_FILES
             if not os.path.isfile(os.path.join(source_dir, f))]
  if missing:
    raise FileNotFoundError(
        f"{source_dir}: missing {missing} (OFA's BPE needs {list(BPE_FILES)})")
  os.makedirs(directory, exist_ok=True)
  for f in BPE_FILES:
    shutil.copyfile(os.path.join(source_dir, f), os.path.join(directory, f))
  return list(BPE_FILES)


def bpe_files(directory: str) -> Optional[dict[str, str]]:
  """`ofa_bpe_vocabulary`'s file arguments when `directory` holds all three."""
  paths = {arg: os.path.join(directory, f) for arg, f in BPE_ARGS.items()}
  return paths if all(os.path.isfile(p) for p in paths.values()) else None
