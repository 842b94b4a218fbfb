"""SIGTERM to one of two training processes stops both at the same step.

Two processes x two CPU devices on loopback (the launcher of
`test_multihost.py`), the toy model slowed on the host so that the signal lands
mid-run. Only process 1 is signalled: process 0 never sees a signal, and must
still save the same step and exit 0 (a host that went on alone would wait
forever in the next collective). A restart of both finishes the run, and the
per-step losses are those of an uninterrupted two-process run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ofa_jax import trainer
from test_multihost import _free_port, _xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12

GIN = """
include 'runs/train.gin'
from __gin__ import dynamic_registration
from ofa_jax import optimizers
from ofa_jax import trainer
import test_partitioning
import test_trainer

MODEL = @test_partitioning.ToyModel()
OPTIMIZER = @optimizers.adamw()
optimizers.adamw.learning_rate = 0.01
optimizers.adamw.total_steps = %TRAIN_STEPS
MIXTURE_OR_TASK_NAME = @test_trainer.toy_mixture()
test_partitioning.ToyModel.step_delay_ms = {delay_ms}
TASK_FEATURE_LENGTHS = {{'inputs': 8, 'targets': 8}}
TRAIN_STEPS = {steps}
BATCH_SIZE = 8
CHECKPOINT_PERIOD = 2
LOG_PERIOD = 1
NUM_PARTITIONS = 2
RANDOM_SEED = 3
trainer.train.num_input_shards = 2
"""


def _launch_pair(tmp_path, model_dir, *, delay_ms: int, tag: str):
  """Both processes of one two-host run; returns [(Popen, log path)]."""
  gin_file = tmp_path / f"{tag}.gin"
  gin_file.write_text(GIN.format(delay_ms=delay_ms, steps=STEPS))
  env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.path.join(REPO, 'tests')}",
             JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags(2))
  port = _free_port()
  procs = []
  for i in range(2):
    log_path = f"{model_dir}.{tag}.{i}.log"
    with open(log_path, "w") as log:
      procs.append((subprocess.Popen(
          [sys.executable, "-m", "ofa_jax.train", f"--gin_file={gin_file}",
           f"--gin.MODEL_DIR='{model_dir}'",
           f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={i}"], cwd=REPO, env=env, stdout=log,
          stderr=subprocess.STDOUT), log_path))
  return procs


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


@pytest.fixture
def launched():
  """Every process the test starts; those still running at its end are killed
  (a failed assertion must not leave a host waiting for its peer)."""
  procs = []
  yield procs
  for proc, _ in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _wait_all(procs, timeout=600) -> None:
  deadline = time.time() + timeout
  for proc, log in procs:
    rc = proc.wait(timeout=max(deadline - time.time(), 1))
    assert rc == 0, f"{log} (rc={rc}):\n{_read(log)[-4000:]}"


def _wait_for_step(procs, model_dir, step, timeout=600) -> None:
  t0 = time.time()
  while not os.path.isdir(os.path.join(model_dir, str(step))):
    for proc, log in procs:
      if proc.poll() is not None:
        raise AssertionError(f"{log} ended (rc={proc.returncode}) before step "
                             f"{step}:\n{_read(log)[-3000:]}")
    if time.time() - t0 > timeout:
      raise AssertionError(f"step {step} not reached in {timeout}s")
    time.sleep(0.05)


def _stopped_at(log: str) -> int:
  found = re.findall(r"training (\w+) at step (\d+)", _read(log))
  assert found, f"{log} has no 'training ... at step' line"
  status, step = found[-1]
  assert status == "preempted", f"{log}: training {status}"
  return int(step)


def _losses(model_dir) -> dict[int, float]:
  """Step -> loss over every event file of the run (both of its starts)."""
  scalars = trainer.read_scalars(os.path.join(model_dir, "train"))
  return dict(scalars["loss"])


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_at_the_same_step(tmp_path, launched):
  preempted, straight = tmp_path / "preempted", tmp_path / "straight"
  procs = _launch_pair(tmp_path, preempted, delay_ms=300, tag="first")
  launched.extend(procs)
  _wait_for_step(procs, preempted, 2)
  procs[1][0].send_signal(signal.SIGTERM)
  _wait_all(procs)
  stops = [_stopped_at(log) for _, log in procs]
  assert stops[0] == stops[1], f"hosts stopped at steps {stops}"
  stop = stops[0]
  assert 2 <= stop < STEPS, f"stopped at {stop}: the signal did not land mid-run"
  assert os.path.isdir(preempted / str(stop)), sorted(os.listdir(preempted))
  assert "signal received on another host" in _read(procs[0][1])

  # The restart and the uninterrupted reference (its own port and directory)
  # run side by side: neither depends on timing.
  restart = _launch_pair(tmp_path, preempted, delay_ms=0, tag="restart")
  reference = _launch_pair(tmp_path, straight, delay_ms=0, tag="straight")
  launched.extend(restart + reference)
  _wait_all(restart)
  _wait_all(reference)
  assert all(f"resumed from {preempted} step {stop}" in _read(log)
             for _, log in restart)
  got, want = _losses(preempted), _losses(straight)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  # The same program on the same restored state: the losses agree exactly.
  np.testing.assert_array_equal([got[s] for s in sorted(got)],
                                [want[s] for s in sorted(want)])
