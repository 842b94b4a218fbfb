"""`python -m ofa_jax.evaluate --gin_file=... --gin.CHECKPOINT_PATH="'...'"`.

Evaluates any checkpoint (a training MODEL_DIR, one of its step folders, or a
converted OFA checkpoint) on every task of a mixture with metrics, and writes
`metrics.json`, `<task>_predictions.jsonl` and the run's `config.gin` to
`EVAL_OUTPUT_DIR`.

Flags as `ofa_jax.train` (t5x conventions): `--gin_file` (repeatable; e.g. a model
gin, `runs/eval.gin` and an experiment gin), `--gin_bindings`, `--gin.NAME=VALUE`,
`--gin_search_paths`. The function called is `ofa_jax.evaluation.
evaluate_checkpoint`; its arguments default to the macros of `gin/runs/eval.gin`
(`MODEL`, `CHECKPOINT_PATH`, `MIXTURE_OR_TASK_NAME`, `TASK_FEATURE_LENGTHS`,
`EVAL_OUTPUT_DIR`, `BATCH_SIZE`, `NUM_PARTITIONS`, `FSDP`); any gin file may bind
it further, e.g. `evaluation.evaluate_checkpoint.register_fns =
[@demo.register_demo_tasks]` to register the tasks first. Exit status: 0 on
success, 2 on a configuration error.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Optional, Sequence

USAGE = ("usage: python -m ofa_jax.evaluate --gin_file=FILE [--gin_file=...] "
         "[--gin.NAME=VALUE ...] [--gin_bindings=...] [--gin_search_paths=a,b]")

# Parsed before the user's files, so that any of them (and the command line)
# can override these bindings.
DEFAULT_BINDINGS = """
from __gin__ import dynamic_registration
from ofa_jax import evaluation
from ofa_jax import partitioning

evaluation.evaluate_checkpoint:
  model = %MODEL
  checkpoint_path = %CHECKPOINT_PATH
  mixture_or_task_name = %MIXTURE_OR_TASK_NAME
  task_feature_lengths = %TASK_FEATURE_LENGTHS
  output_dir = %EVAL_OUTPUT_DIR
  batch_size = %BATCH_SIZE
  partitioner = @partitioning.make_partitioner()

partitioning.make_partitioner:
  num_partitions = %NUM_PARTITIONS
  fsdp = %FSDP
"""


def parse_flags_with_defaults(argv: Sequence[str], defaults: str, usage: str,
                              prog: str) -> list[str]:
  """Parses gin flags, with `defaults` as the first gin file; returns the rest.

  Raises gin_utils.GinConfigError on a configuration problem.
  """
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  files, bindings, paths, rest = gin_utils.parse_argv(argv)
  if not files:
    raise gin_utils.GinConfigError(f"no --gin_file given\n{usage}")
  with tempfile.NamedTemporaryFile("w", suffix=f"_{prog}_defaults.gin",
                                   delete=False) as f:
    f.write(defaults)
  try:
    gin_utils.parse_gin_flags([f.name] + list(files), bindings, paths)
  finally:
    os.unlink(f.name)
  return rest


def write_config(macro: str) -> Optional[str]:
  """Writes the operative gin config into the directory named by `macro`."""
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  try:
    directory = gin.query_parameter(f"%{macro}")
  except ValueError:
    return None
  if not isinstance(directory, str):
    return None
  return gin_utils.write_operative_config(directory)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    print(USAGE)
    return 0
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s")
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from ofa_jax import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tensorflow()
  try:
    rest = parse_flags_with_defaults(argv, DEFAULT_BINDINGS, USAGE, "evaluate")
    if rest:
      raise gin_utils.GinConfigError(f"unknown arguments {rest}\n{USAGE}")
  except (gin_utils.GinConfigError, ValueError) as e:
    print(f"ofa_jax.evaluate: configuration error: {e}", file=sys.stderr)
    return 2
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
  results = gin.get_configurable(evaluation.evaluate_checkpoint)()
  write_config("EVAL_OUTPUT_DIR")
  for task, metrics in sorted(results.items()):
    print(f"{task}: " + ", ".join(f"{k}={v}" for k, v in sorted(metrics.items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
