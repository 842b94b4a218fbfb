"""Gin flags and layering: shorthand rewrite, search paths, required macros, overrides."""

from __future__ import annotations

import os
import subprocess
import sys

import gin
import pytest

from ofa_jax import gin_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SET_ALL = ["MIXTURE_OR_TASK_NAME = 'm'", "TASK_FEATURE_LENGTHS = {'inputs': 4}",
           "TRAIN_STEPS = 10", "MODEL_DIR = '/tmp/unused'"]


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_rewrite_and_split_argv():
  argv = ["--gin_file=a.gin", "--gin.MODEL_DIR='/x'", "--gin_file", "b.gin",
          "--gin_bindings=X = 1", "--gin_search_paths=/p,/q", "--other"]
  assert gin_utils.rewrite_gin_args(argv)[1] == "--gin_bindings=MODEL_DIR = '/x'"
  files, bindings, paths, rest = gin_utils.parse_argv(argv)
  assert files == ["a.gin", "b.gin"]
  assert bindings == ["MODEL_DIR = '/x'", "X = 1"]
  assert paths == ["/p", "/q"] and rest == ["--other"]
  with pytest.raises(gin_utils.GinConfigError, match="needs a value"):
    gin_utils.rewrite_gin_args(["--gin.X="])


def test_missing_required_macro_is_named():
  with pytest.raises(gin_utils.GinConfigError,
                     match=r"required gin macro TRAIN_STEPS is not set.*--gin\."
                           "TRAIN_STEPS"):
    gin_utils.parse_gin_flags(["models/demo.gin", "runs/train.gin"],
                              [b for b in SET_ALL if "TRAIN_STEPS" not in b])


def test_finetune_requires_initial_checkpoint():
  with pytest.raises(gin_utils.GinConfigError, match="INITIAL_CHECKPOINT_PATH"):
    gin_utils.parse_gin_flags(["models/demo.gin", "runs/finetune.gin"], SET_ALL)
  gin.clear_config()
  gin_utils.parse_gin_flags(["models/demo.gin", "runs/finetune.gin"],
                            SET_ALL + ["INITIAL_CHECKPOINT_PATH = '/ckpt'"])
  assert gin.query_parameter("%LEARNING_RATE") == 1e-5  # finetune's default


@pytest.mark.parametrize("size", ["tiny", "medium", "base", "large", "huge",
                                  "demo"])
def test_every_model_layer_parses_with_the_run_layer(size):
  gin_utils.parse_gin_flags([f"models/{size}.gin", "runs/train.gin"], SET_ALL)
  assert gin.query_parameter("%MODEL_SIZE") == size
  from ofa_jax import optimizers
  from ofa_jax import vocab
  from ofa_jax.model import config
  cfg = gin.get_configurable(config.get_config)()
  assert cfg.d_model == config.get_config(size).d_model
  # The embedding is sized from the configured vocabulary (the demo's has the
  # 256 codes of its own VQGAN), not from a copied number.
  configured = gin.get_configurable(vocab.default_vocabulary)()
  assert cfg.vocab_size == configured.vocab_size
  assert configured.num_codes == (256 if size == "demo" else 8192)
  assert cfg.num_codes == configured.num_codes
  assert gin.get_configurable(optimizers.adamw)() is not None


def test_overrides_later_wins_and_search_paths(tmp_path):
  (tmp_path / "exp.gin").write_text(
      "include 'models/tiny.gin'\ninclude 'runs/train.gin'\n"
      "MIXTURE_OR_TASK_NAME = 'mix'\nTASK_FEATURE_LENGTHS = {'inputs': 8}\n"
      "TRAIN_STEPS = 5\nBATCH_SIZE = 4\n")
  argv = ["--gin_file=exp.gin", f"--gin_search_paths={tmp_path}",
          "--gin.MODEL_DIR='/tmp/m'", "--gin.BATCH_SIZE=64",
          "--gin.NUM_PARTITIONS=2"]
  files, bindings, paths, _ = gin_utils.parse_argv(argv)
  gin_utils.parse_gin_flags(files, bindings, paths)
  assert gin.query_parameter("%BATCH_SIZE") == 64  # command line beats the file
  assert gin.query_parameter("%TRAIN_STEPS") == 5
  assert gin.query_parameter("%NUM_PARTITIONS") == 2
  assert gin.query_parameter("%MODEL_DIR") == "/tmp/m"


def test_unknown_file_is_a_clear_error():
  with pytest.raises(gin_utils.GinConfigError, match="nope.gin.*not found"):
    gin_utils.parse_gin_flags(["nope.gin"])


def test_demo_experiment_parses():
  gin_utils.parse_gin_flags(["experiments/demo.gin"], ["MODEL_DIR = '/tmp/d'"])
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "demo_mixture"


def test_write_operative_config(tmp_path):
  gin_utils.parse_gin_flags(["models/demo.gin", "runs/train.gin"], SET_ALL)
  path = gin_utils.write_operative_config(str(tmp_path))
  assert os.path.basename(path) == "config.gin"
  assert "TRAIN_STEPS = 10" in (tmp_path / "config_full.gin").read_text()


@pytest.mark.slow
def test_entry_point_fails_before_any_work(tmp_path):
  """`python -m ofa_jax.train` without MODEL_DIR: exit 2, message names it."""
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run(
      [sys.executable, "-m", "ofa_jax.train", "--gin_file=models/demo.gin",
       "--gin_file=runs/train.gin"] + [f"--gin_bindings={b}" for b in SET_ALL
                                       if "MODEL_DIR" not in b],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "required gin macro MODEL_DIR is not set" in out.stderr
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("run, out_macro", [("eval", "EVAL_OUTPUT_DIR"),
                                             ("infer", "INFER_OUTPUT_DIR")])
def test_experiment_then_eval_or_infer_run(run, out_macro):
  """`--gin_file=experiments/demo.gin --gin_file=runs/eval.gin` (README order)."""
  with pytest.raises(gin_utils.GinConfigError, match="CHECKPOINT_PATH"):
    gin_utils.parse_gin_flags(["experiments/demo.gin", f"runs/{run}.gin"])
  gin.clear_config()
  gin_utils.parse_gin_flags(["experiments/demo.gin", f"runs/{run}.gin"],
                            ["CHECKPOINT_PATH = '/c'", f"{out_macro} = '/o'"])
  # The experiment's task macros survive the run file parsed after it.
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "demo_mixture"


def test_undefined_macro_is_named(tmp_path):
  (tmp_path / "u.gin").write_text(
      "from __gin__ import dynamic_registration\nfrom ofa_jax import optimizers\n"
      "optimizers.adamw.learning_rate = %NOT_DEFINED\n")
  with pytest.raises(gin_utils.GinConfigError,
                     match="gin macro NOT_DEFINED is used but never set"):
    gin_utils.parse_gin_flags([str(tmp_path / "u.gin")])


def test_misspelt_macro_override_names_the_closest_macro():
  with pytest.raises(gin_utils.GinConfigError,
                     match=r"TRAIN_STEPZ.*no gin file uses.*did you mean "
                           r"TRAIN_STEPS\?"):
    gin_utils.parse_gin_flags(["experiments/demo.gin"],
                              ["TRAIN_STEPZ = 3", "MODEL_DIR = '/tmp/d'"])
  # Checked before gin parses anything: nothing was bound.
  with pytest.raises(ValueError):
    gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  # A macro used only by an included file, or only by another binding, is known.
  gin_utils.check_overrides(["experiments/demo.gin"], ["NUM_PARTITIONS = 2"],
                            gin_utils.search_paths())
  gin_utils.check_overrides(
      ["experiments/demo.gin"],
      ["MY_RATE = 0.5", "optimizers.adamw.learning_rate = %MY_RATE"],
      gin_utils.search_paths())
  # Bindings of configurables are gin's to check, not macros.
  gin_utils.check_overrides(["experiments/demo.gin"],
                            ["trainer.train.seed = 3"], gin_utils.search_paths())


def test_macro_defined_but_used_by_no_parsed_file_is_refused():
  # runs/eval.gin sets MODEL_DIR for experiments that include runs/train.gin;
  # evaluation alone never reads it, so overriding it would do nothing.
  with pytest.raises(gin_utils.GinConfigError, match="MODEL_DIR"):
    gin_utils.check_overrides(["runs/eval.gin"], ["MODEL_DIR = '/x'"],
                              gin_utils.search_paths())


def test_train_entry_point_refuses_a_misspelt_override(tmp_path):
  """`--gin.TRAIN_STEPZ=3` (a new user's typo) once trained the default 3000 steps."""
  env = dict(os.environ, PYTHONPATH=REPO)
  model_dir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "ofa_jax.train", "--gin_file=experiments/demo.gin",
       "--gin.TRAIN_STEPZ=3", f"--gin.MODEL_DIR='{model_dir}'"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "TRAIN_STEPZ" in out.stderr and "did you mean TRAIN_STEPS?" in out.stderr
  assert not model_dir.exists()
