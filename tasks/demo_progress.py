"""One terminal line per phase of `make demo`, with elapsed time and an ETA.

Why: the demo runs for many minutes; its user wants to know which phase it is
in and when it ends, not the trainer's and the libraries' log lines (those go
to `demo.log`, see `ofa_jax/log_setup.py`). On a terminal the line of the
running phase is rewritten in place:

    training    step 300/1500   [02:10 elapsed, ETA 08:40]

Elsewhere (a pipe, a CI log) a line is printed at most every `plain_every_s`
and when the phase ends, so the output stays short.

Progress is never read from message text: training's from the trainer's
`progress.json` in the run directory (`polling`), evaluation's from the
evaluator's LogRecords that carry `progress=(phase, done, total)`
(`listening`), backbone pretraining's from its own callback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Callable, Iterator, Optional, TextIO

from ofa_jax import log_setup


def clock_text(seconds: Optional[float]) -> str:
  """mm:ss (h:mm:ss past an hour); "--:--" when unknown."""
  if seconds is None or seconds != seconds or seconds < 0:
    return "--:--"
  s = int(round(seconds))
  if s >= 3600:
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
  return f"{s // 60:02d}:{s % 60:02d}"


class Phase:
  """The line of one phase (backbone pretraining, training, evaluation, report).

  The ETA is measured from the updates, not from the phase start: the first
  unit of work includes start-up and compilation, which would otherwise make
  the remaining ones look slower.
  """

  def __init__(self, name: str, unit: str = "step", *,
               stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.monotonic,
               interactive: Optional[bool] = None, plain_every_s: float = 60.0):
    self.name, self.unit = name, unit
    self.stream = stream or sys.stdout
    self.clock = clock
    self.interactive = (self.stream.isatty() if interactive is None
                        else interactive)
    self.plain_every_s = plain_every_s
    self.start = clock()
    self.done: Optional[int] = None
    self.total: Optional[int] = None
    self._first: Optional[tuple[float, int]] = None  # (time, done) of update 1
    self._last_plain = self.start
    self._width = 0
    self.finished = False

  def eta_s(self) -> Optional[float]:
    """Seconds left at the rate measured since the first update; None if unknown."""
    if self._first is None or self.done is None or self.total is None:
      return None
    t0, d0 = self._first
    if self.done >= self.total:
      return 0.0
    if self.done <= d0 or self.clock() <= t0:
      return None
    rate = (self.done - d0) / (self.clock() - t0)
    return (self.total - self.done) / rate

  def line(self, note: str = "") -> str:
    elapsed = clock_text(self.clock() - self.start)
    count = ""
    if self.done is not None:
      count = f"{self.unit} {self.done}" + (
          f"/{self.total}" if self.total is not None else "")
    times = (f"[{elapsed} elapsed]" if self.finished
             else f"[{elapsed} elapsed, ETA {clock_text(self.eta_s())}]")
    return "  ".join(p for p in (f"{self.name:<11}", f"{count:<15}", times, note)
                     if p).rstrip()

  def update(self, done: int, total: Optional[int] = None) -> None:
    if self.finished:
      return
    self.done = int(done)
    if total is not None:
      self.total = int(total)
    if self._first is None and self.done > 0:  # 0: shown, nothing done yet
      self._first = (self.clock(), self.done)
    if self.interactive:
      self._write("\r" + self._padded(self.line()))
    elif self.clock() - self._last_plain >= self.plain_every_s:
      self._last_plain = self.clock()
      self._write(self.line() + "\n")

  def finish(self, note: str = "") -> None:
    """Ends the phase's line (elapsed time, no ETA)."""
    if self.finished:
      return
    self.finished = True
    text = self.line(note)
    self._write(("\r" + self._padded(text) if self.interactive else text) + "\n")

  def _padded(self, text: str) -> str:
    padded = text.ljust(self._width)
    self._width = len(text)
    return padded

  def _write(self, text: str) -> None:
    self.stream.write(text)
    self.stream.flush()


class ProgressListener(logging.Handler):
  """Forwards LogRecords that carry `progress=(phase, done, total)` to a Phase.

  Attach it to the root logger for the duration of one phase; records of other
  phases (or without progress) are ignored.
  """

  def __init__(self, phase: Phase, key: str):
    super().__init__(level=logging.DEBUG)
    self.phase, self.key = phase, key

  def emit(self, record: logging.LogRecord) -> None:
    progress = getattr(record, log_setup.PROGRESS_ATTR, None)
    try:
      key, done, total = progress  # type: ignore[misc]
    except (TypeError, ValueError):
      return
    if key == self.key:
      self.phase.update(int(done), int(total))


@contextlib.contextmanager
def listening(phase: Phase, key: str) -> Iterator[Phase]:
  """A ProgressListener for `key` on the root logger while the block runs."""
  handler = ProgressListener(phase, key)
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield phase
  finally:
    root.removeHandler(handler)


@contextlib.contextmanager
def polling(phase: Phase, read: Callable[[], Optional[tuple[int, int]]],
            every_s: float = 1.0) -> Iterator[Phase]:
  """Updates `phase` from `read()` -> (done, total) or None, every `every_s`.

  For progress a program leaves on disk (the trainer's `progress.json`, see
  `ofa_jax/run_dir.py`); a failing read is skipped, the next one tried.
  """
  stop = threading.Event()

  def poll() -> None:
    while not stop.wait(every_s):
      try:
        got = read()
      except (OSError, ValueError):
        continue
      if got is not None:
        phase.update(*got)

  thread = threading.Thread(target=poll, name=f"progress-{phase.name}",
                            daemon=True)
  thread.start()
  try:
    yield phase
  finally:
    stop.set()
    thread.join(timeout=5)
