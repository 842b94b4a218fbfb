"""Which cluster started this process, read from its environment.

Why our own reading, when `jax.distributed.initialize()` detects clusters
itself: JAX's detection decides *how* to connect, not *whether* this run is
one of several processes, and its notion of a SLURM job (any job with the
variables set) would start a distributed runtime in a one-task job or in a
batch script run without `srun`, where it waits for peers that never come.
So this module answers "is this process one of several launched together?"
from the launchers' documented variables only, and JAX then fills in the
coordinator address from the same environment.

* SLURM: `srun` sets SLURM_STEP_NUM_TASKS (the tasks of this step) and
  SLURM_PROCID (this task's rank); a job step of one task is a single process.
* Open MPI: `mpirun` sets OMPI_COMM_WORLD_SIZE and OMPI_COMM_WORLD_RANK.
* Cloud TPU: GKE sets TPU_WORKER_HOSTNAMES (one per host); a Cloud TPU VM
  (libtpu installed and a TPU device node present) learns its slice from the
  metadata server, which JAX queries (a one-host slice is a one-process
  runtime, harmless). Skipped when JAX_PLATFORMS excludes TPUs.

Nothing here imports JAX, so the decision can be tested with any environment.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from typing import Callable, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Cluster:
  """A multi-process launch; None fields are left to JAX's own detection."""
  name: str
  num_processes: Optional[int] = None
  process_id: Optional[int] = None


def _int(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ[name])
  except ValueError:
    raise ValueError(f"environment variable {name}={environ[name]!r} is not an "
                     "integer") from None


def _slurm(environ: Mapping[str, str]) -> Optional[Cluster]:
  if "SLURM_JOB_ID" not in environ or "SLURM_STEP_NUM_TASKS" not in environ:
    return None  # not under srun (a batch script itself is one process)
  tasks = _int(environ, "SLURM_STEP_NUM_TASKS")
  if tasks <= 1:
    return None
  missing = [v for v in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST")
             if v not in environ]
  if missing:
    raise ValueError(f"SLURM step of {tasks} tasks without {', '.join(missing)}: "
                     "start the processes with srun, or pass "
                     "--coordinator_address, --num_processes and --process_id")
  return Cluster("slurm", tasks, _int(environ, "SLURM_PROCID"))


def _open_mpi(environ: Mapping[str, str]) -> Optional[Cluster]:
  if "OMPI_COMM_WORLD_SIZE" not in environ:
    return None
  size = _int(environ, "OMPI_COMM_WORLD_SIZE")
  if size <= 1:
    return None
  return Cluster("open-mpi", size, _int(environ, "OMPI_COMM_WORLD_RANK"))


def on_cloud_tpu_vm() -> bool:
  """libtpu installed and a TPU device node present (what a Cloud TPU VM has)."""
  devices = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
  return bool(devices) and importlib.util.find_spec("libtpu") is not None


def _cloud_tpu(environ: Mapping[str, str],
               tpu_vm: Callable[[], bool]) -> Optional[Cluster]:
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms.lower():
    return None
  hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1 or (not hosts and tpu_vm()):
    return Cluster("cloud-tpu")
  return None


def detect(environ: Optional[Mapping[str, str]] = None,
           tpu_vm: Optional[Callable[[], bool]] = None) -> Optional[Cluster]:
  """The cluster that launched this process as one of several, else None.

  `environ` defaults to `os.environ`, `tpu_vm` to `on_cloud_tpu_vm`. Raises
  ValueError when a launcher's variables are there but inconsistent (naming
  the variable), rather than starting a runtime that would hang.
  """
  environ = os.environ if environ is None else environ
  tpu_vm = tpu_vm or on_cloud_tpu_vm
  for found in (_slurm(environ), _open_mpi(environ)):
    if found is not None:
      return found
  return _cloud_tpu(environ, tpu_vm)
