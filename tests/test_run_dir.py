"""The run directory's layout: every reader finds what every writer left."""

from __future__ import annotations

import os

import pytest

from ofa_jax import run_dir


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("x")


def test_steps_and_the_checkpoint_of_each_layout(tmp_path):
  run = str(tmp_path / "run")
  for step in (2, 10):
    os.makedirs(os.path.join(run, str(step), run_dir.STATE))
  os.makedirs(run_dir.eval_dir(run, 10))  # not a step folder
  _touch(os.path.join(run, "123.txt"))
  assert run_dir.steps(run) == [2, 10] and run_dir.latest_step(run) == 10
  assert run_dir.checkpoint_step(run) == 10
  assert run_dir.checkpoint_step(os.path.join(run, "2")) == 2
  assert run_dir.resolve_checkpoint(run, "params") == (
      os.path.join(run, "10", run_dir.STATE), ("params",))
  assert run_dir.resolve_checkpoint(os.path.join(run, "2"), "batch_stats") == (
      os.path.join(run, "2", run_dir.STATE), ("model_state", "batch_stats"))
  converted = str(tmp_path / "converted")
  os.makedirs(run_dir.converted_checkpoint(converted))
  assert run_dir.resolve_checkpoint(converted, "batch_stats") == (
      run_dir.converted_checkpoint(converted), ("batch_stats",))
  assert run_dir.looks_like_checkpoint(run)
  assert run_dir.looks_like_checkpoint(converted)
  assert not run_dir.looks_like_checkpoint(str(tmp_path / "missing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  assert not run_dir.looks_like_checkpoint(str(empty))
  assert run_dir.latest_step(str(empty)) is None
  with pytest.raises(FileNotFoundError, match="does not exist"):
    run_dir.resolve_checkpoint(str(tmp_path / "missing"), "params")


def test_a_step_folder_reads_its_run_directory_files(tmp_path):
  step = str(tmp_path / "run" / "7")
  assert run_dir.model_dirs(step) == [step, str(tmp_path / "run")]
  assert run_dir.model_dirs(str(tmp_path)) == [str(tmp_path)]


def test_structured_records_round_trip(tmp_path):
  d = str(tmp_path)
  assert run_dir.read_model_info(d) == {} and run_dir.read_progress(d) == {}
  run_dir.write_model_info(d, "for people\n", {"total_parameters": 12})
  run_dir.write_progress(d, {"step": 3, "train_steps": 9})
  assert run_dir.read_model_info(d) == {"total_parameters": 12}
  assert (tmp_path / run_dir.MODEL_INFO_TEXT).read_text() == "for people\n"
  assert run_dir.read_progress(d)["step"] == 3
  assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_prediction_files_are_found_by_task(tmp_path):
  out = str(tmp_path)
  for task in ("demo_vqa", "demo_caption"):
    _touch(run_dir.predictions_file(out, task))
  _touch(run_dir.predictions_file(out, "demo_vqa", run_dir.INFERENCES))
  _touch(run_dir.metrics_file(out))
  assert run_dir.prediction_files(out) == {
      "demo_caption": run_dir.predictions_file(out, "demo_caption"),
      "demo_vqa": run_dir.predictions_file(out, "demo_vqa")}
  assert list(run_dir.prediction_files(out, run_dir.INFERENCES)) == ["demo_vqa"]


def test_bpe_files_are_copied_whole_or_not_at_all(tmp_path):
  source, target = tmp_path / "bpe", str(tmp_path / "model")
  source.mkdir()
  for name in run_dir.BPE_FILES[:2]:
    (source / name).write_text(name)
  with pytest.raises(FileNotFoundError, match="dict.txt"):
    run_dir.copy_bpe_files(str(source), target)
  assert run_dir.bpe_files(target) is None
  (source / "dict.txt").write_text("dict.txt")
  assert run_dir.copy_bpe_files(str(source), target) == list(run_dir.BPE_FILES)
  files = run_dir.bpe_files(target)
  assert set(files) == {"encoder_json", "vocab_bpe", "dict_txt"}
  assert open(files["dict_txt"]).read() == "dict.txt"
