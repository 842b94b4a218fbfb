"""Gin flags in t5x's conventions: files, bindings, `--gin.X=` shorthand, search paths.

Why gin: a run is fully described by three layers of text files (model, run,
experiment) plus command-line overrides, and the *operative* config (every value
actually used) is written next to the checkpoints, so any run can be repeated.

Library code is not gin-decorated: the gin files use `dynamic_registration` and
configure plain functions and classes by their import path.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from typing import Any, Iterable, Optional, Sequence

import gin
from gin import config_parser

from ofa_jax import run_dir

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


def search_paths(gin_search_paths: Optional[Sequence[str]] = None) -> list[str]:
  """The given search paths, then the repository's `gin/` folder and root."""
  given = list(gin_search_paths or ())
  return given + [p for p in DEFAULT_GIN_SEARCH_PATHS if p not in given]


def find_gin_file(name: str, paths: Sequence[str]) -> str:
  """Where gin will find `name`: as given, in the working directory, or in
  `paths` (gin's own order)."""
  if os.path.isabs(name):
    if os.path.exists(name):
      return name
  else:
    for prefix in [os.getcwd()] + list(paths):
      if os.path.exists(os.path.join(prefix, name)):
        return os.path.join(prefix, name)
  raise GinConfigError(
      f"gin file {name!r} not found in the working directory or in the search "
      f"paths {list(paths)}")


class _MacroCollector(config_parser.ParserDelegate):
  """A gin parser delegate that records the macros a text refers to (`%NAME`)."""

  def __init__(self):
    self.used: set[str] = set()

  def configurable_reference(self, scoped_configurable_name: str,
                             evaluate: bool) -> str:
    del evaluate
    return scoped_configurable_name

  def macro(self, macro_name: str) -> str:
    self.used.add(macro_name)
    return macro_name


def _statements(text_or_file: Any, where: str, collector: _MacroCollector
                ) -> Iterable[Any]:
  try:
    yield from config_parser.ConfigParser(text_or_file, collector)
  except SyntaxError as e:
    raise GinConfigError(f"{where}: {e}") from e


def _macro_name(statement: Any) -> Optional[str]:
  """The macro a binding statement sets (`NAME = value`), None for others."""
  if (isinstance(statement, config_parser.BindingStatement)
      and not statement.arg_name and not statement.scope
      and "." not in statement.selector and "/" not in statement.selector):
    return statement.selector
  return None


def _read_macros(gin_files: Sequence[str], paths: Sequence[str],
                 collector: _MacroCollector) -> set[str]:
  """The macros the files (and what they include) set; uses go to `collector`."""
  defined: set[str] = set()
  seen: set[str] = set()
  pending = [find_gin_file(f, paths) for f in gin_files]
  while pending:
    path = os.path.abspath(pending.pop())
    if path in seen:
      continue
    seen.add(path)
    with open(path) as f:
      for stmt in _statements(f, path, collector):
        if isinstance(stmt, config_parser.IncludeStatement):
          pending.append(find_gin_file(stmt.filename, paths))
        elif _macro_name(stmt):
          defined.add(_macro_name(stmt))
  return defined


def check_overrides(gin_files: Sequence[str], gin_bindings: Sequence[str],
                    paths: Sequence[str] = DEFAULT_GIN_SEARCH_PATHS) -> None:
  """Raises `GinConfigError` on a binding of a macro that nothing uses.

  Why: gin accepts `TRAIN_STEPZ = 3` as a new macro and the run goes on with
  its default step count. A bare macro binding (`--gin.NAME=` or
  `--gin_bindings=NAME = ...`) must set a macro that a parsed gin file (or
  another binding) refers to as `%NAME`; the error names the closest one.
  Cheap (gin's parser only, nothing imported), so entry points call it first.
  """
  if not gin_files:
    raise GinConfigError("no --gin_file given: pass at least one, e.g. "
                         "--gin_file=experiments/demo.gin")
  collector = _MacroCollector()
  defined = _read_macros(gin_files, paths, collector)
  overrides = []
  for binding in gin_bindings:
    for stmt in _statements(binding, f"gin binding {binding!r}", collector):
      if _macro_name(stmt):
        overrides.append((_macro_name(stmt), binding))
  for name, binding in overrides:
    if name in collector.used:
      continue
    known = sorted(collector.used | defined)
    close = difflib.get_close_matches(name, known, n=1)
    hint = (f"did you mean {close[0]}?" if close else
            f"the macros the files use: {', '.join(sorted(collector.used))}")
    raise GinConfigError(
        f"gin binding {binding!r} (--gin.{name}=...) sets the macro {name}, "
        f"which no gin file uses: {hint} (gin files: {list(gin_files)})")


def parse_gin_flags(gin_files: Sequence[str],
                    gin_bindings: Sequence[str] = (),
                    gin_search_paths: Optional[Sequence[str]] = None,
                    *, finalize: bool = True) -> None:
  """Parses the files (in order) and then the bindings; later ones win.

  Files are looked up in `gin_search_paths` and then in the default paths (the
  repository's `gin/` folder). Before any work starts, `GinConfigError` names
  a `%gin.REQUIRED` macro left unset, and a binding of a macro that no parsed
  file uses (`check_overrides`: a misspelt `--gin.NAME=`).
  """
  paths = search_paths(gin_search_paths)
  check_overrides(gin_files, gin_bindings, paths)
  for path in paths:
    gin.add_config_file_search_path(path)
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
  path = run_dir.config_gin(model_dir)
  text = gin.operative_config_str() or gin.config_str()
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  if also_full:
    with open(run_dir.config_full_gin(model_dir), "w") as f:
      f.write(gin.config_str())
  return path


def write_operative_config_to(macro: str) -> Optional[str]:
  """`write_operative_config` into the directory the macro `macro` names.

  None when the macro is unset or not a path (e.g. an in-memory run).
  """
  try:
    directory = gin.query_parameter(f"%{macro}")
  except ValueError:
    return None
  if not isinstance(directory, str):
    return None
  return write_operative_config(directory)


def parse_run_flags(argv: Sequence[str], run_gin: str, usage: str) -> None:
  """Parses an entry point's flags with its run gin (`gin/runs/...`) first.

  Why first: the run gin binds the entry point's function to its macros, and
  any file or binding of the command line may then override it. Raises
  `GinConfigError` on a configuration problem, unknown arguments included.
  """
  files, bindings, paths, rest = parse_argv(argv)
  if rest:
    raise GinConfigError(f"unknown arguments {rest}\n{usage}")
  if not files:
    raise GinConfigError(f"no --gin_file given\n{usage}")
  parse_gin_flags([run_gin] + list(files), bindings, paths)


def vocab_size_of(vocabulary) -> int:
  """`vocabulary.vocab_size`, for gin: size the embedding from the vocabulary.

  `VOCAB_SIZE = @gin_utils.vocab_size_of()` keeps the model's id space equal to
  the vocabulary's instead of a number copied into a gin file.
  """
  return int(vocabulary.vocab_size)
