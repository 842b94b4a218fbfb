"""`python -m ofa_jax.instructions "<instruction>"`: the instruction linter."""

import contextlib
import os
import sys

from ofa_jax import modalities
from ofa_jax.instructions.grammar import main


@contextlib.contextmanager
def _native_stderr_silenced():
  """Hides what native code writes to fd 2 while the modality files import.

  Why: the schema is assembled from the modality objects, whose files import
  TensorFlow, and its C++ start-up chatter would bury the linter's one-line
  verdict. Python exceptions still propagate (and print) after the block.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(devnull)
    os.close(saved)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  with _native_stderr_silenced():
    modalities.all_modalities()
  sys.exit(main())
