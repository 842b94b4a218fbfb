"""`python -m ofa_jax.infer` over files: a JSONL of field dicts, a folder of images."""

from __future__ import annotations

import json

import pytest

from ofa_jax import api
from ofa_jax import infer
from ofa_jax import models
from ofa_jax import vocab as vocab_lib
from test_api import (CAPTION, IMAGE_SIZE, SHAPES, save_initial_checkpoint,
                      tiny_config, write_images)
from ofa_jax.api.failures import InferenceError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  vocabulary = vocab_lib.default_vocabulary(num_codes=16)
  model = models.OFAModel(tiny_config(vocabulary), vocabulary)
  directory = str(tmp_path_factory.mktemp("infer_model"))
  save_initial_checkpoint(directory, model)
  api.save_model_config(directory, model.config, vocabulary=vocabulary,
                        task_options={"image_size": IMAGE_SIZE})
  return directory


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_infer_jsonl_and_image_folder_write_one_result_per_line(model_dir,
                                                                tmp_path):
  images_dir = tmp_path / "images"
  images_dir.mkdir()
  paths = write_images(str(images_dir), 3, seed=1)
  data = tmp_path / "data.jsonl"
  # Relative image paths are read relative to the JSONL file.
  data.write_text("".join(json.dumps({"img": f"images/scene_{i}.png"}) + "\n"
                          for i in range(3)))
  out = tmp_path / "out" / "captions.jsonl"
  rc = infer.main([f"--checkpoint={model_dir}", f"--instruction={CAPTION}",
                   f"--input={data}", f"--output={out}", "--beam_size=1",
                   "--max_len=5", "--batch_size=2"])
  assert rc == 0
  rows = _lines(out)
  assert len(rows) == 3
  for i, row in enumerate(rows):
    assert row["input"]["img"].endswith(f"scene_{i}.png")
    assert isinstance(row["text"], str) and row["kind"] == "text"
    assert isinstance(row["score"], float)

  out2 = tmp_path / "shapes.jsonl"
  rc = infer.main([f"--checkpoint={model_dir}",
                   "--instruction=[IMAGE:img] what shape is in the image? -> "
                   "[TEXT:label]", f"--input={images_dir}", f"--output={out2}",
                   f"--closed_set={','.join(SHAPES)}", "--beam_size=1",
                   "--batch_size=2"])
  assert rc == 0
  rows = _lines(out2)
  assert [r["input"]["img"] for r in rows] == sorted(paths)
  assert all(r["label"] in SHAPES for r in rows)


@pytest.mark.slow
def test_infer_folder_with_a_corrupt_png_predicts_the_others(model_dir,
                                                             tmp_path, capsys):
  """The issue's reproduction: one corrupt PNG among four."""
  images_dir = tmp_path / "images"
  images_dir.mkdir()
  good = write_images(str(images_dir), 3, seed=2)
  corrupt = images_dir / "scene_9.png"
  corrupt.write_text("this is text, not a PNG")
  out = tmp_path / "captions.jsonl"
  argv = [f"--checkpoint={model_dir}", f"--instruction={CAPTION}",
          f"--input={images_dir}", f"--output={out}", "--beam_size=1",
          "--max_len=4", "--batch_size=2"]
  assert infer.main(argv) == 0
  rows = _lines(out)
  assert [r["input"]["img"] for r in rows] == sorted(good + [str(corrupt)])
  assert all(isinstance(r["text"], str) for r in rows[:3])
  assert rows[3] == {"input": {"img": str(corrupt)}, "source": str(corrupt),
                     "index": 3, "error": "undecodable IMAGE in field 'img': "
                     "not a JPEG/PNG/GIF/BMP image"}
  captured = capsys.readouterr()
  assert "wrote 3 results and 1 error records" in captured.out
  assert "1 of 4 inputs failed" in captured.err
  assert f"{corrupt}: undecodable IMAGE" in captured.err
  # --strict: the same output, and a failing exit status.
  assert infer.main(argv + ["--strict"]) == 1
  assert _lines(out) == rows


def test_failure_summary_lists_each_failure_up_to_a_limit():
  failures = [InferenceError(i, f"/d/{i}.png", "not a JPEG/PNG/GIF/BMP image")
              for i in range(3)]
  report = infer.FilesReport(output_path="o.jsonl", lines=10,
                             failures=failures)
  assert report.predictions == 7
  text = report.failure_summary(max_listed=2)
  assert text.splitlines() == [
      "3 of 10 inputs failed (their error records are in o.jsonl):",
      "  /d/0.png: not a JPEG/PNG/GIF/BMP image",
      "  /d/1.png: not a JPEG/PNG/GIF/BMP image", "  ... and 1 more"]
  assert infer.FilesReport("o.jsonl", 4, []).failure_summary() == ""


def test_infer_reports_bad_input(tmp_path, capsys):
  rc = infer.main(["--checkpoint", str(tmp_path), "--instruction", CAPTION,
                   "--input", str(tmp_path / "missing.jsonl"),
                   "--output", str(tmp_path / "o.jsonl"), "--config", "demo"])
  assert rc == 2
  assert "does not exist" in capsys.readouterr().err
  (tmp_path / "x.jsonl").write_text(json.dumps({"img": "a.png"}) + "\n")
  rc = infer.main(["--checkpoint", str(tmp_path), "--instruction", CAPTION,
                   "--input", str(tmp_path / "x.jsonl"),
                   "--output", str(tmp_path / "o.jsonl"), "--config", "demo"])
  assert rc == 2
  assert "holds no checkpoint" in capsys.readouterr().err


def test_read_inputs_errors_name_the_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"img": "a.png"}\n[1, 2]\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
    infer.read_inputs(str(bad))
  with pytest.raises(ValueError, match="name the field"):
    infer.read_inputs(str(tmp_path))
  good = tmp_path / "good.jsonl"
  good.write_text('{"img": "a.png", "q": "why?"}\n\n{"img": "/abs/b.png"}\n')
  rows = infer.read_inputs(str(good), file_field="img", fields={"q": "what?"})
  assert rows == [{"img": str(tmp_path / "a.png"), "q": "why?"},
                  {"img": "/abs/b.png", "q": "what?"}]


@pytest.mark.slow
def test_infer_task_writes_one_line_per_example_of_the_split(tmp_path):
  from tasks import demo  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.default_vocabulary(num_codes=16)
  model = models.OFAModel(tiny_config(vocabulary), vocabulary)
  model_dir = str(tmp_path / "model")
  save_initial_checkpoint(model_dir, model)
  register = lambda: demo.register_demo_tasks(  # noqa: E731
      image_size=IMAGE_SIZE, canvas=32, replace=True, vocabulary=vocabulary,
      num_examples={"train": 2, "validation": 2, "test": 3})
  lengths = dict(demo.FEATURE_LENGTHS, inputs=32, targets=16)
  counts = infer.infer_task(
      model=model, checkpoint_path=model_dir, mixture_or_task_name="demo_vqa",
      task_feature_lengths=lengths, output_dir=str(tmp_path / "out"),
      split="test", batch_size=2, decode_overrides={"beam_size": 1},
      register_fns=[register])
  assert counts == {"demo_vqa": 3}
  rows = _lines(tmp_path / "out" / "demo_vqa_inferences.jsonl")
  assert len(rows) == 3
  answers = set(demo.CLOSED_SETS["vqa"])
  assert all(r["prediction"] in answers for r in rows)
  assert all(r["inputs"].startswith("[IMAGE]") for r in rows)


def test_cli_flags_and_file_slot_come_from_the_modalities(tmp_path):
  # The old flags keep working: --image_size is IMAGE's run option and
  # --image_field an alias of --file_field (IMAGE reads files).
  args = infer._file_parser().parse_args(
      ["--checkpoint=c", "--instruction=i", "--input=x", "--output=y",
       "--image_size=48", "--image_field=pic"])
  assert args.image_size == 48 and args.file_field == "pic"
  assert infer.file_slot_of(CAPTION)[0] == "img"
  assert ".png" in infer.file_slot_of(CAPTION)[1]
  assert infer.file_slot_of("[TEXT:q] -> [TEXT:a]") == (None, ())
  (tmp_path / "a.png").write_bytes(b"x")
  (tmp_path / "notes.txt").write_text("not an image")
  rows = infer.read_inputs(str(tmp_path), file_field="img")
  assert rows == [{"img": str(tmp_path / "a.png")}]
