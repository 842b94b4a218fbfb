"""The flags of the gin entry points that decode a checkpoint (evaluate, infer).

Why a module of its own: `python -m ofa_jax.evaluate` and the task mode of
`python -m ofa_jax.infer` take the same flags as `python -m ofa_jax.train`: gin
flags plus the multi-host flags (`--coordinator_address`, `--num_processes`,
`--process_id`), and must start `jax.distributed` after a cheap check of the
flags and before anything touches the devices. Each entry point would
otherwise repeat that order.
"""

from __future__ import annotations

from typing import Sequence

from ofa_jax import gin_utils
from ofa_jax import multihost


def parse_and_start(argv: Sequence[str], run_gin: str,
                    usage: str) -> multihost.MultihostFlags:
  """Takes the multi-host flags out of `argv`, checks the gin flags, starts
  the distributed runtime when a coordinator is given, then parses the gin
  files (`run_gin` first, see `gin_utils.parse_run_flags`).

  Raises `gin_utils.GinConfigError` or `ValueError` on a bad flag; a
  misspelt `--gin.NAME=` or an unknown argument fails before the runtime
  starts (no process then waits for the others).
  """
  mh_flags, rest = multihost.parse_flags(argv)
  files, bindings, paths, unknown = gin_utils.parse_argv(rest)
  if unknown:
    raise gin_utils.GinConfigError(f"unknown arguments {unknown}\n{usage}")
  if not files:
    raise gin_utils.GinConfigError(f"no --gin_file given\n{usage}")
  gin_utils.check_overrides([run_gin, *files], bindings,
                            gin_utils.search_paths(paths))
  multihost.initialize(mh_flags)
  gin_utils.parse_run_flags(rest, run_gin, usage)
  return mh_flags


def log_file_name(name: str) -> str:
  """`name` on process 0, `<stem>.process<i><suffix>` on process i > 0: the
  processes of one run share an output folder but not a log file."""
  import jax  # pylint: disable=g-import-not-at-top
  index = jax.process_index()
  if index == 0:
    return name
  stem, dot, suffix = name.rpartition(".")
  return f"{stem}.process{index}{dot}{suffix}" if dot else f"{name}.process{index}"
