"""Quiet terminal logs for the entry points; the full log still goes to a file.

Why: a run's terminal used to be mostly other libraries' INFO chatter (orbax on
every checkpoint, absl and seqio on every dataset, TensorFlow's C++ start-up
lines, JAX's compilation cache), which buried the lines a user reads (progress,
warnings, results). By default the terminal now shows our own INFO lines and
every library's warnings; the libraries' INFO lines go to the run's log file
only. `--verbose` (or OFA_JAX_VERBOSE=1) puts everything back on the terminal.

How an entry point uses it (`ofa_jax.train`, `evaluate`, `infer`, the demo):

    argv = log_setup.configure(argv)            # first, before TF is imported
    ...parse gin...
    log_setup.log_to_file_in("MODEL_DIR", "train.log")

Records logged before the output directory is known are kept (up to
BUFFER_RECORDS) and written to the file when it is opened. Configuration is
first-caller-wins, as `logging.basicConfig` is: when the demo calls
`ofa_jax.train.main` in process, the demo's quieter terminal and its single log
file stay in place.

Progress: a LogRecord may carry `progress=(phase, done, total)` in its `extra`
(PROGRESS_ATTR; the evaluator's per-task line does), so that a driver shows
progress without reading message text (`tasks/demo_progress.py`). The trainer's
progress is in its run directory instead (`run_dir.read_progress`).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
from typing import Optional, Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "OFA_JAX_VERBOSE"
# Loggers (and their children) whose INFO lines stay off the terminal. absl's
# logger carries what orbax, seqio and TF's Python side log through absl.
NOISY_LOGGERS = ("absl", "orbax", "tensorflow", "jax", "jaxlib", "seqio", "etils",
                 "py.warnings")
# TF's C++ logging (and XLA's, through TSL): 1 drops INFO, 2 WARNING as well.
TF_CPP_MIN_LOG_LEVEL = "2"
BUFFER_RECORDS = 10_000
PROGRESS_ATTR = "progress"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Marks the handlers this module installed (an attribute on the handler, so the
# state lives in the logging tree, not in this module).
_MARK = "_ofa_jax_log_setup"


class QuietFilter(logging.Filter):
  """Passes our own records, and the libraries' from `library_level` up.

  Python warnings (`py.warnings`, deprecations in libraries) stay off the
  terminal at any level: they are for developers, and are in the log file.
  """

  def __init__(self, library_level: int = logging.WARNING):
    super().__init__()
    self.library_level = library_level

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == "py.warnings":
      return False
    return record.levelno >= self.library_level or not is_noisy(record.name)


def is_noisy(name: str) -> bool:
  return any(name == n or name.startswith(n + ".") for n in NOISY_LOGGERS)


def verbose_requested(argv: Sequence[str] = ()) -> bool:
  """`--verbose` among the arguments, or OFA_JAX_VERBOSE set to a true value."""
  env = os.environ.get(VERBOSE_ENV, "").strip().lower()
  return VERBOSE_FLAG in argv or env in ("1", "true", "yes", "on")


class _Console(logging.StreamHandler):
  """The terminal: the current `sys.stderr` at each record (tests swap it)."""

  def __init__(self, stream=None):
    super().__init__(stream or sys.stderr)
    self._follow = stream is None

  def emit(self, record: logging.LogRecord) -> None:
    if self._follow:
      self.stream = sys.stderr
    super().emit(record)


class _Buffer(logging.Handler):
  """Keeps the last records until the log file is known (see `log_to_file`)."""

  def __init__(self, capacity: int):
    super().__init__(level=logging.DEBUG)
    self.records: collections.deque = collections.deque(maxlen=capacity)

  def emit(self, record: logging.LogRecord) -> None:
    self.records.append(record)


def _ours(kind: str) -> list[logging.Handler]:
  return [h for h in logging.getLogger().handlers if getattr(h, _MARK, None) == kind]


def _mark(handler: logging.Handler, kind: str) -> logging.Handler:
  setattr(handler, _MARK, kind)
  return handler


def configure(argv: Optional[Sequence[str]] = None, *,
              console_level: int = logging.INFO,
              library_level: int = logging.WARNING,
              log_file: Optional[str] = None, stream=None) -> list[str]:
  """Sets up logging for an entry point; returns `argv` without `--verbose`.

  Call it before TensorFlow is imported (its C++ log level is read then). A
  second call in the same process (an entry point run by a driver) changes
  nothing: the first caller's terminal and file stay. `console_level` is the
  terminal's threshold for every logger and `library_level` the libraries'
  (the demo uses WARNING and ERROR: it shows its own progress lines, and the
  libraries' advice, e.g. seqio's on caching, is for developers); `log_file`
  opens the full log at once.
  """
  argv = list(argv or ())
  verbose = verbose_requested(argv)
  argv = [a for a in argv if a != VERBOSE_FLAG]
  root = logging.getLogger()
  if _ours("console"):
    return argv
  if verbose:
    os.environ[VERBOSE_ENV] = "1"  # for the entry points a driver calls
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)
    logging.captureWarnings(True)
    _quiet_sentencepiece()
  # Handlers that basicConfig or a library added would print everything again.
  for handler in list(root.handlers):
    if type(handler) is logging.StreamHandler:  # pylint: disable=unidiomatic-typecheck
      root.removeHandler(handler)  # not subclasses: pytest's capture stays
  console = _Console(stream)
  console.setFormatter(logging.Formatter(FORMAT))
  console.setLevel(logging.DEBUG if verbose else console_level)
  if not verbose:
    console.addFilter(QuietFilter(library_level))
  root.addHandler(_mark(console, "console"))
  root.addHandler(_mark(_Buffer(BUFFER_RECORDS), "buffer"))
  root.setLevel(logging.INFO)
  if log_file:
    log_to_file(log_file)
  return argv


def _quiet_sentencepiece() -> None:
  """SentencePiece logs its INFO lines from C++ on every model load."""
  try:
    import sentencepiece  # pylint: disable=g-import-not-at-top
    sentencepiece.set_min_log_level(1)
  except (ImportError, AttributeError):  # an older sentencepiece: it stays
    pass


def log_to_file(path: str) -> Optional[str]:
  """Writes the full log (and what was buffered) to `path`; None if one is open.

  A file opened earlier in the process (by a driver) keeps receiving everything,
  so an entry point run in process does not split the log in two.
  """
  root = logging.getLogger()
  if _ours("file"):
    return None
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter(FORMAT))
  handler.setLevel(logging.DEBUG)
  for buffer in _ours("buffer"):
    for record in buffer.records:
      handler.handle(record)
    root.removeHandler(buffer)
  root.addHandler(_mark(handler, "file"))
  return path


def log_to_file_in(macro: str, filename: str) -> Optional[str]:
  """`log_to_file` in the directory the gin macro `macro` names (after parsing).

  None when the macro is unbound or empty (e.g. a run without an output folder).
  """
  import gin  # pylint: disable=g-import-not-at-top
  try:
    directory = gin.query_parameter(f"%{macro}")
  except ValueError:
    return None
  if not isinstance(directory, str) or not directory:
    return None
  return log_to_file(os.path.join(directory, filename))


def reset() -> None:
  """Removes what `configure` installed (tests; a driver that runs twice)."""
  root = logging.getLogger()
  for kind in ("console", "buffer", "file"):
    for handler in _ours(kind):
      root.removeHandler(handler)
      handler.close()
  logging.captureWarnings(False)
