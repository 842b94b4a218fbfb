"""`python -m ofa_jax.train --gin_file=... --gin.MODEL_DIR="'...'"`: the training entry point.

Flags (t5x conventions): `--gin_file` (repeatable), `--gin_bindings`
(repeatable), `--gin.NAME=VALUE`, `--gin_search_paths` (comma-separated; the
repository's `gin/` folder is always searched), and the multi-host flags
`--coordinator_address`, `--num_processes`, `--process_id` and
`--multihost=auto|on|off` (auto: a process started by srun, mpirun or on a
Cloud TPU slice joins its peers without flags; `ofa_jax.multihost`).

The gin files bind `ofa_jax.trainer.train` (see `gin/runs/train.gin`); this module
only parses flags, starts the distributed runtime and calls it. Exit status: 0 when
the run finished or was stopped by SIGTERM/SIGINT after saving, 1 on a non-finite
loss, 2 on a configuration error.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

USAGE = ("usage: python -m ofa_jax.train --gin_file=FILE [--gin_file=...] "
         "[--gin.NAME=VALUE ...] [--gin_bindings=...] [--gin_search_paths=a,b] "
         "[--coordinator_address=H:P --num_processes=N --process_id=I] "
         "[--multihost=auto|on|off]")


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    print(USAGE)
    return 0
  from ofa_jax import log_setup  # pylint: disable=g-import-not-at-top
  argv = log_setup.configure(argv)  # libraries' INFO off the terminal; --verbose
  # Flags first: a configuration error must surface before JAX or TF start.
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from ofa_jax import multihost  # pylint: disable=g-import-not-at-top
  try:
    mh_flags, rest = multihost.parse_flags(argv)
    files, bindings, paths, rest = gin_utils.parse_argv(rest)
    if rest:
      raise gin_utils.GinConfigError(f"unknown arguments {rest}\n{USAGE}")
    # A misspelt --gin.NAME= fails here, before JAX, TF or the runtime start.
    gin_utils.check_overrides(files, bindings, gin_utils.search_paths(paths))
    multihost.initialize(mh_flags)
    from ofa_jax import tf_setup  # pylint: disable=g-import-not-at-top
    tf_setup.hide_accelerators_from_tensorflow()
    gin_utils.parse_gin_flags(files, bindings, paths)
    log_setup.log_to_file_in("MODEL_DIR", "train.log")
  except (gin_utils.GinConfigError, ValueError) as e:
    print(f"ofa_jax.train: configuration error: {e}", file=sys.stderr)
    return 2

  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import trainer  # pylint: disable=g-import-not-at-top
  try:
    # `train` is bound by the run gin (`ofa_jax.trainer.train.*`).
    result = gin.get_configurable(trainer.train)()
  except trainer.NonFiniteLossError as e:
    print(f"ofa_jax.train: {e}", file=sys.stderr)
    return 1
  logging.info("training %s at step %d", result.status, result.step)
  return 0


if __name__ == "__main__":
  sys.exit(main())
