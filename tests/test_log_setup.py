"""Quiet terminal logs: libraries' INFO off the terminal, everything in the file."""

from __future__ import annotations

import io
import logging
import os
import warnings

import gin
import pytest

from ofa_jax import log_setup


@pytest.fixture
def clean_logging(monkeypatch):
  for name in (log_setup.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL"):
    monkeypatch.setenv(name, "")  # records the value to restore, then unsets
    monkeypatch.delenv(name)
  root = logging.getLogger()
  level = root.level
  log_setup.reset()
  yield
  log_setup.reset()
  root.setLevel(level)


def _log_everything() -> None:
  logging.getLogger().info("ours: step 3/10")
  logging.getLogger("absl").info("orbax: saving checkpoint")
  logging.getLogger("jax._src.compilation_cache").info("cache miss")
  logging.getLogger("tensorflow").warning("tf warning")
  logging.getLogger("seqio.utils").info("seqio chatter")
  warnings.warn("a library deprecation", DeprecationWarning, stacklevel=1)


def test_terminal_is_quiet_and_the_file_has_everything(clean_logging, tmp_path):
  terminal = io.StringIO()
  argv = log_setup.configure(["--gin.X=1"], stream=terminal)
  assert argv == ["--gin.X=1"]
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == log_setup.TF_CPP_MIN_LOG_LEVEL
  with warnings.catch_warnings():
    warnings.simplefilter("always")
    _log_everything()  # before the file is known: buffered
  path = log_setup.log_to_file(str(tmp_path / "run" / "train.log"))
  logging.getLogger("orbax.checkpoint").info("orbax after")
  shown = terminal.getvalue()
  assert "ours: step 3/10" in shown and "tf warning" in shown
  for quiet in ("saving checkpoint", "cache miss", "seqio chatter",
                "deprecation", "orbax after"):
    assert quiet not in shown
  text = open(path).read()
  for line in ("ours: step 3/10", "saving checkpoint", "cache miss", "tf warning",
               "seqio chatter", "deprecation", "orbax after"):
    assert line in text
  # A file already open keeps the log: a second one is not started.
  assert log_setup.log_to_file(str(tmp_path / "other.log")) is None


def test_verbose_flag_puts_everything_back(clean_logging):
  terminal = io.StringIO()
  argv = log_setup.configure(["--verbose", "--out=x"], stream=terminal)
  assert argv == ["--out=x"]
  assert log_setup.verbose_requested()  # inherited by entry points run in process
  _log_everything()
  assert "saving checkpoint" in terminal.getvalue()
  assert "seqio chatter" in terminal.getvalue()


def test_first_caller_wins(clean_logging):
  outer, inner = io.StringIO(), io.StringIO()
  log_setup.configure([], stream=outer, console_level=logging.WARNING)
  # An entry point run in process (the demo calls ofa_jax.train.main).
  assert log_setup.configure(["--verbose"], stream=inner) == []
  logging.getLogger().info("trainer line")
  logging.getLogger().warning("a warning")
  assert inner.getvalue() == ""
  assert "trainer line" not in outer.getvalue()
  assert "a warning" in outer.getvalue()


def test_log_file_from_a_gin_macro(clean_logging, tmp_path):
  log_setup.configure([], stream=io.StringIO())
  gin.clear_config()
  try:
    assert log_setup.log_to_file_in("NO_SUCH_MACRO", "x.log") is None
    gin.parse_config(f"OUT = '{tmp_path}'")
    path = log_setup.log_to_file_in("OUT", "eval.log")
  finally:
    gin.clear_config()
  assert path == str(tmp_path / "eval.log")
  logging.getLogger().info("into the file")
  assert "into the file" in open(path).read()


def test_library_level_hides_library_warnings(clean_logging):
  terminal = io.StringIO()
  log_setup.configure([], stream=terminal, library_level=logging.ERROR)
  logging.getLogger("absl").warning("seqio: cache this task")
  logging.getLogger("orbax").error("orbax failed")
  logging.getLogger().warning("our warning")
  shown = terminal.getvalue()
  assert "cache this task" not in shown
  assert "orbax failed" in shown and "our warning" in shown
