"""Cluster start-up: which environments start `jax.distributed`, and with what.

No cluster here: the environments are dictionaries and
`jax.distributed.initialize` is replaced by a recorder.
"""

from __future__ import annotations

import jax
import pytest

from ofa_jax import cluster_env
from ofa_jax import multihost

SRUN_4 = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4",
          "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2",
          "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "node[01-04]"}
MPIRUN_2 = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1",
            "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911"}
GKE_TPU = {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "TPU_WORKER_ID": "3"}


def _no_tpu() -> bool:
  return False


def _tpu() -> bool:
  return True


@pytest.mark.parametrize("environ", [
    {},  # a workstation
    # sbatch's batch script itself (no srun): one process, whatever --ntasks.
    {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"},
    # srun of one task.
    dict(SRUN_4, SLURM_STEP_NUM_TASKS="1", SLURM_PROCID="0"),
    {"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"},
    {"TPU_WORKER_HOSTNAMES": "localhost"},  # a one-host slice on GKE
    dict(GKE_TPU, JAX_PLATFORMS="cpu"),  # TPUs asked away
])
def test_single_process_environments_are_not_clusters(environ):
  assert cluster_env.detect(environ, tpu_vm=_no_tpu) is None


def test_launchers_are_recognised_with_their_counts():
  assert cluster_env.detect(SRUN_4, tpu_vm=_no_tpu) == cluster_env.Cluster(
      "slurm", 4, 2)
  assert cluster_env.detect(MPIRUN_2, tpu_vm=_no_tpu) == cluster_env.Cluster(
      "open-mpi", 2, 1)
  # TPU hosts: JAX reads the worker list and id itself.
  assert cluster_env.detect(GKE_TPU, tpu_vm=_no_tpu) == cluster_env.Cluster(
      "cloud-tpu")
  assert cluster_env.detect({}, tpu_vm=_tpu) == cluster_env.Cluster("cloud-tpu")
  assert cluster_env.detect({"JAX_PLATFORMS": "cpu"}, tpu_vm=_tpu) is None


def test_broken_launcher_variables_are_named():
  with pytest.raises(ValueError, match="SLURM_PROCID='x'"):
    cluster_env.detect(dict(SRUN_4, SLURM_PROCID="x"), tpu_vm=_no_tpu)
  partial = {k: v for k, v in SRUN_4.items() if k != "SLURM_STEP_NODELIST"}
  with pytest.raises(ValueError, match="without SLURM_STEP_NODELIST"):
    cluster_env.detect(partial, tpu_vm=_no_tpu)


@pytest.fixture
def started(monkeypatch):
  """The arguments of each `jax.distributed.initialize` call; no TPU VM here."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kw: calls.append(kw))
  monkeypatch.setattr(multihost, "_select_cpu_collectives", lambda: None)
  monkeypatch.setattr(cluster_env, "on_cloud_tpu_vm", _no_tpu)
  return calls


def _init(argv, environ):
  flags, rest = multihost.parse_flags(argv)
  assert rest == []
  multihost.initialize(flags, environ)


def test_no_flags_start_from_the_environment(started):
  _init([], {})
  assert started == []  # a single machine starts nothing
  _init([], SRUN_4)
  _init([], GKE_TPU)
  assert started == [{"num_processes": 4, "process_id": 2}, {}]


def test_flags_override_the_environment(started):
  _init(["--coordinator_address=h0:1234", "--num_processes=2",
         "--process_id=1"], SRUN_4)
  assert started == [{"coordinator_address": "h0:1234", "num_processes": 2,
                      "process_id": 1}]


def test_a_cloud_tpu_vm_starts_without_variables(started, monkeypatch):
  monkeypatch.setattr(cluster_env, "on_cloud_tpu_vm", _tpu)
  _init([], {})
  assert started == [{}]  # JAX asks the TPU metadata server


def test_multihost_off_and_on(started):
  _init(["--multihost=off"], SRUN_4)
  assert started == []
  _init(["--multihost", "on"], {})  # JAX's own detection decides
  assert started == [{}]


def test_a_failed_start_names_its_source(monkeypatch):
  def refuse(**kw):
    del kw
    raise ValueError("coordinator_address should be defined.")
  monkeypatch.setattr(jax.distributed, "initialize", refuse)
  monkeypatch.setattr(multihost, "_select_cpu_collectives", lambda: None)
  with pytest.raises(ValueError, match=r"from the open-mpi environment "
                     r"\(num_processes=2, process_id=1\).*--coordinator_address"):
    _init([], MPIRUN_2)


def test_contradicting_flags_are_refused():
  with pytest.raises(ValueError, match="--multihost=maybe"):
    multihost.parse_flags(["--multihost=maybe"])
  with pytest.raises(ValueError, match="contradicts"):
    multihost.parse_flags(["--multihost=off", "--coordinator_address=h:1",
                           "--num_processes=2", "--process_id=0"])
  with pytest.raises(ValueError, match="need --coordinator_address"):
    multihost.parse_flags(["--num_processes=2"])
