"""Two processes x two CPU devices evaluate like one process x four devices.

`python -m ofa_jax.evaluate` with the multi-host flags (gloo on loopback) must
give the same `metrics.json` and byte-identical prediction files as one
process over a four-device mesh: every process feeds its rows of each global
batch (the last one padded), the outputs are gathered in dataset order, and
process 0 alone computes the metrics and writes the files.

The model is `test_api`'s tiny OFA network with host-drawn random weights; the
task is the demo's closed-set classification (trie-constrained greedy
decoding, accuracy, eval loss) on its validation split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ofa_jax import entry_flags
from ofa_jax import evaluation
from ofa_jax import models
from ofa_jax import partitioning
from ofa_jax import vocab as vocab_lib
from ofa_jax.evaluation import hosts
from tasks import demo
from test_api import save_initial_checkpoint, tiny_config
from test_multihost import REPO, _free_port, _xla_flags

N = 6  # validation examples: batches of 4, the second one half padding
BATCH_SIZE = 4
# One task: every compiled program costs seconds in each of the three
# processes (a second task, scored over all candidates, doubled the test's
# time; `hosts.fetch` gathers its outputs as it does the decoder's).
TASK = "demo_classify"
LENGTHS = dict(demo.FEATURE_LENGTHS, inputs=32, targets=16)
NUM_PARTITIONS = 2  # the data axis spans the two processes, `model` each host


def register_tasks(vocabulary=None) -> str:
  """The demo tasks (6 validation examples each); returns the task evaluated."""
  vocabulary = vocabulary or vocab_lib.default_vocabulary(num_codes=16)
  demo.register_demo_tasks(image_size=32, canvas=32, replace=True,
                           num_examples={"train": 4, "validation": N, "test": N},
                           vocabulary=vocabulary)
  return TASK


def _model():
  vocabulary = vocab_lib.default_vocabulary(num_codes=16)
  return models.OFAModel(tiny_config(vocabulary), vocabulary), vocabulary


def _gin(model) -> str:
  c = model.config
  return f"""
include 'runs/eval.gin'
from __gin__ import dynamic_registration
from ofa_jax import evaluation
from ofa_jax import models
from ofa_jax import vocab
from ofa_jax.model import config
import test_multihost_evaluation

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
test_multihost_evaluation.register_tasks.vocabulary = %VOCAB
evaluation.evaluate_checkpoint.register_fns = [@test_multihost_evaluation.register_tasks]
evaluation.evaluate_checkpoint.decode_overrides = {{'beam_size': 1}}
MIXTURE_OR_TASK_NAME = '{TASK}'
TASK_FEATURE_LENGTHS = {LENGTHS!r}
BATCH_SIZE = {BATCH_SIZE}
NUM_PARTITIONS = {NUM_PARTITIONS}
"""


def test_local_row_indices_follow_the_data_sharding():
  """One process holds every row; the rows of its devices otherwise."""
  p = partitioning.make_partitioner(num_partitions=2,
                                    devices=jax.devices()[:4])
  np.testing.assert_array_equal(hosts.local_row_indices(p, 8), np.arange(8))
  batch = {"x": np.arange(8)}
  assert hosts.local_rows(p, batch)["x"].tolist() == list(range(8))
  assert hosts.share_from_leader({"a": [1.5]}) == {"a": [1.5]}
  assert entry_flags.log_file_name("eval.log") == "eval.log"


def test_entry_point_refuses_a_bad_multihost_flag(capsys):
  from ofa_jax import evaluate  # pylint: disable=g-import-not-at-top
  rc = evaluate.main(["--gin_file=runs/eval.gin",
                      "--coordinator_address=localhost:1", "--num_processes=2"])
  assert rc == 2
  assert "--num_processes and --process_id" in capsys.readouterr().err


def _launch(gin_file, out_dir, process_id, port, work_dir):
  """`python -m ofa_jax.evaluate` as process `process_id` of 2 (2 devices);
  the checkpoint is `<work_dir>/model`, the log `<work_dir>/process<i>.log`."""
  env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.path.join(REPO, 'tests')}",
             JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags(2))
  log = open(os.path.join(work_dir, f"process{process_id}.log"), "w")
  proc = subprocess.Popen(
      [sys.executable, "-m", "ofa_jax.evaluate", f"--gin_file={gin_file}",
       f"--gin.CHECKPOINT_PATH='{work_dir}/model'",
       f"--gin.EVAL_OUTPUT_DIR='{out_dir}'",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={process_id}"],
      cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  return proc, log.name


@pytest.mark.slow
def test_two_processes_evaluate_like_one_process(tmp_path):
  model, vocabulary = _model()
  save_initial_checkpoint(str(tmp_path / "model"), model)
  gin_file = tmp_path / "mh_eval.gin"
  gin_file.write_text(_gin(model))
  multi = tmp_path / "multi"
  port = _free_port()
  procs = [_launch(gin_file, multi, i, port, str(tmp_path)) for i in range(2)]
  try:
    # The reference, meanwhile: one process, a mesh of four of its devices.
    single = tmp_path / "single"
    want = evaluation.evaluate_checkpoint(
        model=model, checkpoint_path=str(tmp_path / "model"),
        mixture_or_task_name=register_tasks(vocabulary),
        task_feature_lengths=LENGTHS, output_dir=str(single),
        batch_size=BATCH_SIZE, decode_overrides={"beam_size": 1},
        partitioner=partitioning.make_partitioner(
            num_partitions=NUM_PARTITIONS, devices=jax.devices()[:4]))
    for proc, log in procs:
      assert proc.wait(timeout=240) == 0, open(log).read()[-4000:]
  finally:
    for proc, _ in procs:
      if proc.poll() is None:
        proc.kill()

  assert set(want) == {TASK}
  assert all(m["num_examples"] == N for m in want.values())
  got_summary = json.loads((multi / "metrics.json").read_text())
  want_summary = json.loads((single / "metrics.json").read_text())
  assert got_summary == want_summary
  assert got_summary["tasks"] == json.loads(json.dumps(want))
  for name in want:
    got = (multi / f"{name}_predictions.jsonl").read_bytes()
    assert got == (single / f"{name}_predictions.jsonl").read_bytes(), name
    assert [json.loads(line)["index"] for line in got.splitlines()] == list(
        range(N))
  # Process 0 wrote the files and the config; process 1 only its own log.
  assert (multi / "config.gin").exists()
  assert (multi / "eval.log").exists() and (multi / "eval.process1.log").exists()
