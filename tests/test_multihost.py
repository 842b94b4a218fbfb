"""Two processes x two CPU devices on loopback train like one process x four devices.

Both runs use 2 input shards (`trainer.train.num_input_shards = 2`): the global
batch is then the same whatever the number of hosts, so the losses must agree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ofa_jax import multihost
from ofa_jax import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4

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
TASK_FEATURE_LENGTHS = {{'inputs': 8, 'targets': 8}}
TRAIN_STEPS = {steps}
BATCH_SIZE = 8
CHECKPOINT_PERIOD = 2
LOG_PERIOD = 1
NUM_PARTITIONS = 2
trainer.train.num_input_shards = 2
""".format(steps=STEPS)


def test_parse_flags():
  flags, rest = multihost.parse_flags(
      ["--coordinator_address=localhost:1234", "--num_processes", "2",
       "--process_id=1", "--gin_file=x.gin"])
  assert flags == multihost.MultihostFlags("localhost:1234", 2, 1)
  assert rest == ["--gin_file=x.gin"] and flags.enabled
  assert not multihost.parse_flags([])[0].enabled
  with pytest.raises(ValueError, match="--num_processes"):
    multihost.parse_flags(["--coordinator_address=h:1"])
  with pytest.raises(ValueError, match="--process_id=2"):
    multihost.parse_flags(["--coordinator_address=h:1", "--num_processes=2",
                           "--process_id=2"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _xla_flags(devices: int) -> str:
  """The suite's XLA_FLAGS (conftest.py) with `devices` host devices instead.

  Both runs compared below get the same compiler options as the rest of the
  suite; only the device count differs.
  """
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def _launch(tmp_path, model_dir, devices, extra=()):
  gin_file = tmp_path / "mh.gin"
  gin_file.write_text(GIN)
  env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.path.join(REPO, 'tests')}",
             JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags(devices))
  suffix = extra[-1].split("=")[-1] if extra else "single"
  log = open(f"{model_dir}.{suffix}.log", "w")
  return subprocess.Popen(
      [sys.executable, "-m", "ofa_jax.train", f"--gin_file={gin_file}",
       f"--gin.MODEL_DIR='{model_dir}'", *extra], cwd=REPO, env=env,
      stdout=log, stderr=subprocess.STDOUT), log.name


def _losses(model_dir):
  scalars = trainer.read_scalars(os.path.join(model_dir, "train"))
  return [v for _, v in sorted(scalars["loss"])]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  multi = tmp_path / "multi"
  procs = [_launch(tmp_path, multi, 2, (
      f"--coordinator_address=localhost:{port}", "--num_processes=2",
      f"--process_id={i}")) for i in range(2)]
  single = tmp_path / "single"
  for proc, log in procs:
    rc = proc.wait(timeout=300)
    assert rc == 0, open(log).read()[-4000:]
  proc, log = _launch(tmp_path, single, 4)
  assert proc.wait(timeout=300) == 0, open(log).read()[-4000:]

  got, want = _losses(multi), _losses(single)
  assert len(got) == len(want) == STEPS
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Both hosts wrote their part of the checkpoints; the final step is complete.
  assert str(STEPS) in os.listdir(multi)
  info = (multi / "model-info.txt").read_text()
  assert "'data': 2" in info and "'model': 2" in info
