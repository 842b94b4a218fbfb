"""Gin flags in t5x's conventions: files, bindings, `--gin.X=` shorthand, search paths.

Why gin: a run is fully described by three layers of text files (model, run,
experiment) plus command-line overrides, and the *operative* config (every value
actually used) is written next to the checkpoints, so any run can be repeated.

Library code is not gin-decorated: the gin files use `dynamic_registration` and
configure plain functions and classes by their import path.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Optional, Sequence

import gin

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `gin/` of the repository, and the repository itself (so both
# "experiments/demo.gin" and "gin/experiments/demo.gin" resolve).
DEFAULT_GIN_SEARCH_PATHS = (os.path.join(_REPO_ROOT, "gin"), _REPO_ROOT)

_REQUIRED_RE = re.compile(r"^(\S+)/macro\.value set to `%gin\.REQUIRED`")
_UNDEFINED_RE = re.compile(r"No bindings specified for '(\S+)/gin\.macro'")
_SHORTHAND_RE = re.compile(r"^--gin\.([^=]+)=(.*)$", re.DOTALL)


class _DropPathNotFound(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


class GinConfigError(ValueError):
  """A gin file or binding is missing, malformed, or leaves a macro unset."""


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE` (t5x's shorthand).

  Values are gin literals: strings need quotes, e.g. `--gin.MODEL_DIR="'/tmp/x'"`.
  Other arguments are returned unchanged.
  """
  out = []
  for arg in argv:
    m = _SHORTHAND_RE.match(arg)
    if m:
      name, value = m.group(1), m.group(2)
      if not value:
        raise GinConfigError(f"{arg!r}: --gin.{name}= needs a value")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out


def parse_gin_flags(gin_files: Sequence[str],
                    gin_bindings: Sequence[str] = (),
                    gin_search_paths: Optional[Sequence[str]] = None,
                    *, finalize: bool = True) -> None:
  """Parses the files (in order) and then the bindings; later ones win.

  Files are looked up in `gin_search_paths` and then in the default paths (the
  repository's `gin/` folder). A `%gin.REQUIRED` macro left unset raises
  `GinConfigError` naming the macro, before any work starts.
  """
  if not gin_files:
    raise GinConfigError("no --gin_file given: pass at least one, e.g. "
                         "--gin_file=experiments/demo.gin")
  paths = list(gin_search_paths or ()) + [
      p for p in DEFAULT_GIN_SEARCH_PATHS if p not in (gin_search_paths or ())]
  for path in paths:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not os.path.isabs(f) and not any(
        os.path.exists(os.path.join(p, f)) for p in [os.getcwd()] + paths):
      raise GinConfigError(
          f"gin file {f!r} not found in the working directory or in the search "
          f"paths {paths}")
  # gin logs an ERROR for every search-path candidate that misses, even when a
  # later one is found; those lines are noise, real misses raise below.
  quiet = _DropPathNotFound()
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings),
                                        finalize_config=False)
  except Exception as e:  # gin raises many types; all are config errors here
    raise GinConfigError(f"while parsing gin files {list(gin_files)} and bindings "
                         f"{list(gin_bindings)}: {type(e).__name__}: {e}") from e
  finally:
    logging.getLogger().removeFilter(quiet)
  if finalize:
    try:
      gin.finalize()
    except ValueError as e:
      m = _REQUIRED_RE.match(str(e))
      if m:
        macro = m.group(1)
        raise GinConfigError(
            f"required gin macro {macro} is not set: set it in an experiment gin "
            f"file or pass --gin.{macro}=VALUE (gin files: {list(gin_files)})"
        ) from e
      m = _UNDEFINED_RE.search(str(e))
      if m:
        raise GinConfigError(
            f"gin macro {m.group(1)} is used but never set: set it in a gin file or "
            f"pass --gin.{m.group(1)}=VALUE (gin files: {list(gin_files)})") from e
      raise GinConfigError(f"gin config is invalid: {e}") from e


def parse_argv(argv: Sequence[str]) -> tuple[list[str], list[str], list[str],
                                              list[str]]:
  """Splits argv into (gin_files, gin_bindings, gin_search_paths, the rest).

  A small parser of our own, so that entry points need no absl: repeatable
  `--gin_file`, `--gin_bindings`, `--gin_search_paths` (comma-separated), plus the
  `--gin.X=` shorthand.
  """
  files, bindings, paths, rest = [], [], [], []
  args = rewrite_gin_args(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    for flag, target in (("--gin_file", files), ("--gin_bindings", bindings),
                         ("--gin_search_paths", paths)):
      if arg == flag or arg.startswith(flag + "="):
        if arg == flag:
          if i + 1 >= len(args):
            raise GinConfigError(f"{flag} needs a value")
          value = args[i + 1]
          i += 1
        else:
          value = arg[len(flag) + 1:]
        if flag == "--gin_search_paths":
          target.extend(p for p in value.split(",") if p)
        else:
          target.append(value)
        break
    else:
      rest.append(arg)
    i += 1
  return files, bindings, paths, rest


def write_operative_config(model_dir: str, *, also_full: bool = True) -> str:
  """Writes `config.gin` (the values actually used) into `model_dir`.

  Call it after the configured functions ran far enough (gin records a binding as
  operative when it is used). Also writes `config_full.gin` with everything that
  was parsed, which is available before the run starts.
  """
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, "config.gin")
  text = gin.operative_config_str() or gin.config_str()
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  if also_full:
    with open(os.path.join(model_dir, "config_full.gin"), "w") as f:
      f.write(gin.config_str())
  return path


def vocab_size_of(vocabulary) -> int:
  """`vocabulary.vocab_size`, for gin: size the embedding from the vocabulary.

  `VOCAB_SIZE = @gin_utils.vocab_size_of()` keeps the model's id space equal to
  the vocabulary's instead of a number copied into a gin file.
  """
  return int(vocabulary.vocab_size)
