"""Multi-host runs: `jax.distributed` from flags, agreement between hosts.

Why so little: JAX does the heavy lifting. Each host runs the same program,
reads its own input shards (`data_iterator`), turns its rows into slices of global
arrays (`Partitioner.shard_batch` via `jax.make_array_from_process_local_data`),
and calls the same jitted steps; orbax writes each host's shards of a checkpoint.
What is left is starting the distributed runtime and making decisions (stop on a
signal, stop on NaN) the same on every host, so that no host waits forever in a
collective that the others skipped.

Starting the runtime (`--multihost=auto`, the default): explicit flags
(`--coordinator_address`, `--num_processes`, `--process_id`) win; without
them, a process that a cluster launcher started as one of several (SLURM's
srun, Open MPI's mpirun, the hosts of a Cloud TPU slice: `cluster_env`) calls
`jax.distributed.initialize()`, which reads the coordinator from the same
environment; any other process stays single-host. `--multihost=on` calls it
even when `cluster_env` recognises nothing (JAX's own detection decides, and
fails naming what it lacks); `--multihost=off` never starts it.

On one machine, several processes on loopback test all of this: CPU collectives
go through gloo (`jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from ofa_jax import cluster_env

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class MultihostFlags:
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  mode: str = "auto"  # MODES: from the environment / always / never

  @property
  def enabled(self) -> bool:
    """Whether the flags name the coordinator (they then override the
    environment)."""
    return self.coordinator_address is not None


def parse_flags(argv: Sequence[str]) -> tuple[MultihostFlags, list[str]]:
  """Takes `--coordinator_address`, `--num_processes`, `--process_id` and
  `--multihost` out of argv."""
  values: dict[str, str] = {}
  rest = []
  names = ("coordinator_address", "num_processes", "process_id", "multihost")
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    for name in names:
      flag = f"--{name}"
      if arg == flag:
        if i + 1 >= len(args):
          raise ValueError(f"{flag} needs a value")
        values[name] = args[i + 1]
        i += 1
        break
      if arg.startswith(flag + "="):
        values[name] = arg[len(flag) + 1:]
        break
    else:
      rest.append(arg)
    i += 1
  flags = MultihostFlags(
      coordinator_address=values.get("coordinator_address"),
      num_processes=int(values["num_processes"]) if "num_processes" in values
      else None,
      process_id=int(values["process_id"]) if "process_id" in values else None,
      mode=values.get("multihost", "auto"))
  if flags.mode not in MODES:
    raise ValueError(f"--multihost={flags.mode}: expected one of {', '.join(MODES)}")
  if flags.enabled and (flags.num_processes is None or flags.process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id")
  if not flags.enabled and (flags.num_processes is not None
                            or flags.process_id is not None):
    raise ValueError("--num_processes and --process_id need --coordinator_address "
                     "(without all three, a cluster launcher's environment is "
                     "read: --multihost=auto)")
  if flags.enabled and flags.mode == "off":
    raise ValueError("--multihost=off contradicts --coordinator_address")
  if flags.enabled and not 0 <= flags.process_id < flags.num_processes:
    raise ValueError(f"--process_id={flags.process_id} must be in "
                     f"[0, --num_processes={flags.num_processes})")
  return flags, rest


def initialize(flags: MultihostFlags,
               environ: Optional[Mapping[str, str]] = None) -> None:
  """Starts `jax.distributed` from the flags, else from a cluster launcher's
  environment (`environ`, default `os.environ`); a no-op for a single process.

  Must run before anything touches the devices.
  """
  if flags.mode == "off":
    return
  if flags.enabled:
    _start("flags", coordinator_address=flags.coordinator_address,
           num_processes=flags.num_processes, process_id=flags.process_id)
    return
  cluster = cluster_env.detect(environ)
  if cluster is None and flags.mode == "on":
    cluster = cluster_env.Cluster("JAX's cluster detection")
  if cluster is None:
    return
  _start(f"the {cluster.name} environment", num_processes=cluster.num_processes,
         process_id=cluster.process_id)


def _select_cpu_collectives() -> None:
  """CPU devices of several processes talk through gloo."""
  if (jax.config.jax_platforms or "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _start(source: str, **kwargs: Any) -> None:
  """`jax.distributed.initialize` with the arguments that are set (JAX reads
  the others from the environment)."""
  _select_cpu_collectives()
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise ValueError(
        f"multihost: could not start jax.distributed from {source} "
        f"({', '.join(f'{k}={v}' for k, v in kwargs.items()) or 'no arguments'}):"
        f" {e}; pass --coordinator_address, --num_processes and --process_id, "
        "or --multihost=off for a single-process run") from e
  logging.info("multihost: started from %s", source)
  logging.info("multihost: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def is_leader() -> bool:
  """Process 0 writes the files that exist once (config, summaries, reports)."""
  return jax.process_index() == 0


def any_host(flag: bool) -> bool:
  """True on every host when it is true on any host (a collective: call it on all)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
  return bool(np.any(flags))


def barrier(name: str) -> None:
  """All hosts reach `name` before any goes on."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
