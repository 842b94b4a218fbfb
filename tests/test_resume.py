"""Exact resume after SIGKILL, and SIGTERM saving, with `python -m ofa_jax.train`.

Each run is a subprocess on the toy model and toy mixture (`test_trainer.py`),
configured by a gin file that includes the real `runs/train.gin`. The state
part of exact resume is also checked on the OFA network itself (the `demo`
preset, BatchNorm statistics and dropout on): save, restore, continue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from ofa_jax import checkpoints
from ofa_jax import gin_utils
from ofa_jax import optimizers
from ofa_jax import partitioning
from ofa_jax import train_state as train_state_lib
from ofa_jax import trainer
from test_partitioning import ofa_batch, ofa_demo_model, ofa_trainer_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12

TOY_GIN = """
include 'runs/train.gin'
from __gin__ import dynamic_registration
from ofa_jax import optimizers
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
LABEL_SMOOTHING = 0.1
NUM_PARTITIONS = 2
RANDOM_SEED = 7
"""


def _start(tmp_path, model_dir, delay_ms=0, steps=STEPS):
  gin_file = tmp_path / "toy.gin"
  gin_file.write_text(TOY_GIN.format(delay_ms=delay_ms, steps=steps))
  env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.path.join(REPO, 'tests')}")
  log = open(str(model_dir) + ".log", "a")
  return subprocess.Popen(
      [sys.executable, "-m", "ofa_jax.train", f"--gin_file={gin_file}",
       f"--gin.MODEL_DIR='{model_dir}'"], cwd=REPO, env=env, stdout=log,
      stderr=subprocess.STDOUT)


def _log(model_dir) -> str:
  with open(str(model_dir) + ".log") as f:
    return f.read()


def _wait_for_step(proc, model_dir, step, timeout=120):
  t0 = time.time()
  while not os.path.isdir(os.path.join(model_dir, str(step))):
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc={proc.returncode}) before step {step}:"
                           f"\n{_log(model_dir)[-3000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError(f"step {step} not reached in {timeout}s")
    time.sleep(0.05)


def _state(model_dir, step):
  ckptr = ocp.PyTreeCheckpointer()
  try:
    return ckptr.restore(os.path.join(model_dir, str(step), "state"))
  finally:
    ckptr.close()


def _steps(model_dir):
  return sorted(int(d) for d in os.listdir(model_dir) if d.isdigit())


@pytest.mark.slow
def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path):
  # The uninterrupted run goes in process (same gin, same code path, one
  # interpreter start less); the interrupted one is a killed subprocess.
  straight = tmp_path / "straight"
  gin_file = tmp_path / "straight.gin"
  gin_file.write_text(TOY_GIN.format(delay_ms=0, steps=STEPS))
  gin.clear_config()
  try:
    gin_utils.parse_gin_flags([str(gin_file)], [f"MODEL_DIR = '{straight}'"])
    assert gin.get_configurable(trainer.train)().step == STEPS
  finally:
    gin.clear_config()

  killed = tmp_path / "killed"
  proc = _start(tmp_path, killed, delay_ms=300)
  _wait_for_step(proc, killed, 6)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert STEPS not in _steps(killed), "the run finished before it was killed"

  proc = _start(tmp_path, killed)
  assert proc.wait(timeout=300) == 0, _log(killed)[-3000:]
  assert "resumed from" in _log(killed)

  a, b = _state(straight, STEPS), _state(killed, STEPS)
  flat_a = ocp.tree.to_flat_dict(a)
  flat_b = ocp.tree.to_flat_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:  # parameters and Adam moments, bit for bit
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=str(k))


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
  model_dir = tmp_path / "run"
  proc = _start(tmp_path, model_dir, delay_ms=300, steps=40)
  _wait_for_step(proc, model_dir, 4)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0, _log(model_dir)[-3000:]
  assert "training preempted" in _log(model_dir)
  last = _steps(model_dir)[-1]
  assert 4 <= last < 40
  state = _state(model_dir, last)
  assert int(state["step"]) == last
  import json
  with open(os.path.join(model_dir, str(last), "data", "metadata")) as f:
    position = json.load(f)
  assert position["batches_consumed"] == last


def _adam_moments(opt_state) -> list[optax.ScaleByAdamState]:
  return [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]


@pytest.mark.slow
def test_ofa_network_restored_mid_run_continues_bit_identically(tmp_path):
  """4 straight steps == 2 steps, save, restore onto the shardings, 2 more.

  What a restarted `trainer.train` does with the state (the batches and the
  input position are the toy test's above): the restored step keys the dropout
  masks, and the BatchNorm running statistics travel in `model_state`.
  """
  part = partitioning.make_partitioner(num_partitions=2)
  tx = optimizers.adamw(learning_rate=1e-3, total_steps=4, warmup_steps=0)
  start, shardings, compiled = ofa_trainer_step(part, ofa_demo_model(), tx)
  rng = train_state_lib.dropout_key(7)  # the trainer's default PRNG

  def run(state, steps):
    for step in steps:
      assert int(state.step) == step
      state, _, _ = compiled(state, part.shard_batch(ofa_batch(step)), rng)
    return state

  straight = jax.device_get(run(start, range(4)))
  mgr = checkpoints.CheckpointManager(str(tmp_path), save_period=2)
  assert mgr.save(2, run(start, range(2)), {"batches_consumed": 2}, {})
  mgr.close()

  # A restarted process has only the shapes and shardings, then the checkpoint.
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      start, shardings)
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  restored, position, _ = mgr.restore(abstract)
  mgr.close()
  assert position == {"batches_consumed": 2} and int(restored.step) == 2
  resumed = jax.device_get(run(restored, range(2, 4)))

  # The run did train the statistics and moments the comparison covers.
  stats = resumed.model_state["batch_stats"]
  assert jax.tree.leaves(stats) and any(
      not np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(stats),
          jax.tree.leaves(jax.device_get(start.model_state["batch_stats"]))))
  (moments,) = _adam_moments(resumed.opt_state)
  assert all(np.any(m != 0) for m in jax.tree.leaves((moments.mu, moments.nu)))
  flat_a = jax.tree_util.tree_flatten_with_path(straight)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(resumed)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  # Step, parameters, Adam moments and BatchNorm statistics, bit for bit.
  for (path, a), (_, b) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
