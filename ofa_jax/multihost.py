"""Multi-host runs: `jax.distributed` from flags, agreement between hosts.

Why so little: JAX does the heavy lifting. Each host runs the same program,
reads its own input shards (`data_iterator`), turns its rows into slices of global
arrays (`Partitioner.shard_batch` via `jax.make_array_from_process_local_data`),
and calls the same jitted steps; orbax writes each host's shards of a checkpoint.
What is left is starting the distributed runtime and making decisions (stop on a
signal, stop on NaN) the same on every host, so that no host waits forever in a
collective that the others skipped.

On one machine, several processes on loopback test all of this: CPU collectives
go through gloo (`jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class MultihostFlags:
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None

  @property
  def enabled(self) -> bool:
    return self.coordinator_address is not None


def parse_flags(argv: Sequence[str]) -> tuple[MultihostFlags, list[str]]:
  """Takes `--coordinator_address`, `--num_processes`, `--process_id` out of argv."""
  values: dict[str, str] = {}
  rest = []
  names = ("coordinator_address", "num_processes", "process_id")
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
      process_id=int(values["process_id"]) if "process_id" in values else None)
  if flags.enabled and (flags.num_processes is None or flags.process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id")
  if flags.enabled and not 0 <= flags.process_id < flags.num_processes:
    raise ValueError(f"--process_id={flags.process_id} must be in "
                     f"[0, --num_processes={flags.num_processes})")
  return flags, rest


def initialize(flags: MultihostFlags) -> None:
  """Starts `jax.distributed` when a coordinator is given; a no-op otherwise.

  Must run before anything touches the devices.
  """
  if not flags.enabled:
    return
  if (jax.config.jax_platforms or "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=flags.coordinator_address,
                             num_processes=flags.num_processes,
                             process_id=flags.process_id)
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
