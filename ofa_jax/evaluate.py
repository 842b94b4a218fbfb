"""`python -m ofa_jax.evaluate --gin_file=... --gin.CHECKPOINT_PATH="'...'"`.

Evaluates any checkpoint (a training MODEL_DIR, one of its step folders, or a
converted OFA checkpoint) on every task of a mixture with metrics, and writes
`metrics.json`, `<task>_predictions.jsonl` and the run's `config.gin` to
`EVAL_OUTPUT_DIR`.

Flags as `ofa_jax.train` (t5x conventions): `--gin_file` (repeatable; e.g. a model
gin, `runs/eval.gin` and an experiment gin), `--gin_bindings`, `--gin.NAME=VALUE`,
`--gin_search_paths`, and the multi-host flags `--coordinator_address`,
`--num_processes`, `--process_id` (start every process with the same flags
but its own id: each decodes its rows of every batch, and process 0 writes
the files and prints the metrics). The function called is
`ofa_jax.evaluation.evaluate_checkpoint`; `gin/runs/eval.gin` (always parsed
first) binds its arguments to macros (`MODEL`, `CHECKPOINT_PATH`,
`MIXTURE_OR_TASK_NAME`, `TASK_FEATURE_LENGTHS`, `EVAL_OUTPUT_DIR`, `BATCH_SIZE`,
`NUM_PARTITIONS`, `FSDP`); any gin file may bind it further, e.g. `evaluation.evaluate_checkpoint.register_fns =
[@demo.register_demo_tasks]` to register the tasks first. Exit status: 0 on
success, 2 on a configuration error.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = ("usage: python -m ofa_jax.evaluate --gin_file=FILE [--gin_file=...] "
         "[--gin.NAME=VALUE ...] [--gin_bindings=...] [--gin_search_paths=a,b] "
         "[--coordinator_address=H:P --num_processes=N --process_id=I]")
# Binds `evaluation.evaluate_checkpoint` to its macros; parsed before the
# command line's files so that any of them can override it.
RUN_GIN = "runs/eval.gin"


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    print(USAGE)
    return 0
  from ofa_jax import log_setup  # pylint: disable=g-import-not-at-top
  argv = log_setup.configure(argv)  # libraries' INFO off the terminal; --verbose
  from ofa_jax import entry_flags  # pylint: disable=g-import-not-at-top
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from ofa_jax import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tensorflow()
  try:
    entry_flags.parse_and_start(argv, RUN_GIN, USAGE)
    log_setup.log_to_file_in("EVAL_OUTPUT_DIR",
                             entry_flags.log_file_name("eval.log"))
  except (gin_utils.GinConfigError, ValueError) as e:
    print(f"ofa_jax.evaluate: configuration error: {e}", file=sys.stderr)
    return 2
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
  from ofa_jax import multihost  # pylint: disable=g-import-not-at-top
  results = gin.get_configurable(evaluation.evaluate_checkpoint)()
  if not multihost.is_leader():
    return 0
  gin_utils.write_operative_config_to("EVAL_OUTPUT_DIR")
  for task, metrics in sorted(results.items()):
    print(f"{task}: " + ", ".join(f"{k}={v}" for k, v in sorted(metrics.items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
