"""Training metrics: TensorBoard event files, per-task scalars, progress records.

Why apart from the loop: what is measured and where it goes (event files, the
log, the run directory's `progress.json`) is one concern; the loop only hands
each step's device metrics to `MetricsLog` and asks it to flush.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

from ofa_jax import run_dir


class EventFileWriter:
  """A TensorBoard writer that needs no `tensorboard` package (clu's writers do).

  Writes scalars to `<logdir>/events.out.tfevents.*` as TFRecords of `Event`
  protos (what tf.summary writes) and to the log; clu's writer interface.
  """

  def __init__(self, logdir: str, just_logging: bool = False):
    self._writer = None
    if not just_logging:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
      os.makedirs(logdir, exist_ok=True)
      name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
              f"{os.getpid()}")
      self._writer = tf.io.TFRecordWriter(os.path.join(logdir, name))
      self._event_pb2 = event_pb2
      ev = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
      self._writer.write(ev.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={float(v):.6g}" for k, v in sorted(scalars.items())))
    if self._writer is None:
      return
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in sorted(scalars.items())])
    ev = self._event_pb2.Event(wall_time=time.time(), step=int(step),
                               summary=summary)
    self._writer.write(ev.SerializeToString())

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def create_writer(logdir: str, just_logging: bool = False) -> Any:
  """clu's default writer when available, else `EventFileWriter`."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return EventFileWriter(logdir, just_logging=just_logging)
  return metric_writers.create_default_writer(logdir, just_logging=just_logging)


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """All scalars of the event files under `logdir` (for tests and reports)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  out: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(logdir)):
    if not name.startswith("events.out.tfevents"):
      continue
    for rec in tf.data.TFRecordDataset(os.path.join(logdir, name)):
      ev = event_pb2.Event.FromString(rec.numpy())
      for v in ev.summary.value:
        value = v.simple_value
        if v.HasField("tensor"):
          value = float(np.asarray(tf.make_ndarray(v.tensor)))
        out.setdefault(v.tag, []).append((ev.step, value))
  return out


def per_task_scalars(per_example: Mapping[str, np.ndarray],
                     task_names: Mapping[int, str]) -> dict[str, float]:
  """Loss and accuracy per task from per-example sums gathered over steps.

  `per_example` holds flat arrays `task_id`, `loss_sum`, `num_tokens` and
  optionally `num_correct` (token-level accuracy).
  """
  out = {}
  ids = per_example["task_id"]
  for tid in np.unique(ids):
    sel = ids == tid
    name = task_names.get(int(tid), f"task_{int(tid)}")
    ntok = float(per_example["num_tokens"][sel].sum())
    if ntok <= 0:
      continue
    out[f"{name}/loss"] = float(per_example["loss_sum"][sel].sum()) / ntok
    if "num_correct" in per_example:
      out[f"{name}/accuracy"] = float(per_example["num_correct"][sel].sum()) / ntok
  return out


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the run stopped before saving it."""


def _eta(seconds: int) -> str:
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsLog:
  """Per-step metrics kept on device until a flush fetches and writes them.

  Why pending: fetching a step's metrics waits for that step, so they are
  fetched every log period only. A flush stops the run on a non-finite loss
  (before any later save), writes the mean scalars and per-task loss and
  accuracy, logs one progress line and, on the leader, records the progress in
  the run directory (`run_dir.write_progress`) for programs to read.
  """

  def __init__(self, writer: Any, *, task_names: Mapping[int, str],
               train_steps: int, model_dir: str, leader: bool, step: int):
    self.writer = writer
    self.task_names = dict(task_names)
    self.train_steps = train_steps
    self.model_dir = model_dir
    self.leader = leader
    self._pending: list[tuple[int, Any, Any]] = []
    self._t_last, self._s_last, self._tokens = time.time(), step, 0.0

  def add(self, step: int, metrics: Any, per_example: Any) -> None:
    self._pending.append((step, metrics, per_example))

  def compiled(self, step: int, metrics: Any) -> None:
    """Called after the first step: keeps compilation out of the throughput."""
    jax.block_until_ready(metrics)
    logging.info("first step (compilation included) took %.1fs",
                 time.time() - self._t_last)
    self._t_last, self._s_last = time.time(), step

  def flush(self, last_good: Optional[int]) -> None:
    """Fetches pending metrics, stops on a non-finite loss, writes the rest.

    `last_good` is the last saved step, named by the error.
    """
    if not self._pending:
      return
    fetched = jax.device_get(list(self._pending))
    self._pending.clear()
    for s, m, _ in fetched:
      if not np.isfinite(m["loss"]):
        raise NonFiniteLossError(
            f"non-finite loss {float(m['loss'])} at step {s}: stopping. The last "
            f"good checkpoint is step {last_good} in {self.model_dir}")
    s_now, m_last = fetched[-1][0], fetched[-1][1]
    scalars = {k: float(np.mean([m[k] for _, m, _ in fetched])) for k in m_last}
    per_ex = [(s, p) for s, _, p in fetched if "task_id" in p and "loss_sum" in p
              and "num_tokens" in p]
    if per_ex:
      cat = {k: np.concatenate([p[k] for _, p in per_ex]) for k in per_ex[0][1]}
      scalars.update(per_task_scalars(cat, self.task_names))
      # Throughput counts the steps timed since `_t_last` (not the compiled one).
      self._tokens += sum(float(p["num_tokens"].sum()) for s, p in per_ex
                          if s > self._s_last)
    dt = max(time.time() - self._t_last, 1e-9)
    steps_per_s = max(s_now - self._s_last, 0) / dt
    if steps_per_s > 0:  # not when only the compiled first step is pending
      scalars["steps_per_sec"] = steps_per_s
    if self._tokens:
      scalars["tokens_per_sec"] = self._tokens / dt
    self.writer.write_scalars(s_now, scalars)
    if self.leader:
      self._report(s_now, scalars, steps_per_s)
    self._t_last, self._s_last, self._tokens = time.time(), s_now, 0.0

  def _report(self, step: int, scalars: Mapping[str, float],
              steps_per_s: float) -> None:
    """The progress line for people and `progress.json` for programs."""
    left_s = (int((self.train_steps - step) / steps_per_s) if steps_per_s > 0
              else None)
    tokens_per_s = scalars.get("tokens_per_sec")
    logging.info("step %d/%d loss %.4f | %.2f steps/s%s | %s left", step,
                 self.train_steps, scalars["loss"], steps_per_s,
                 f", {tokens_per_s:.0f} tokens/s" if tokens_per_s else "",
                 "?" if left_s is None else _eta(left_s))
    run_dir.write_progress(self.model_dir, {
        "step": int(step), "train_steps": int(self.train_steps),
        "loss": float(scalars["loss"]), "steps_per_sec": float(steps_per_s),
        "tokens_per_sec": tokens_per_s, "seconds_left": left_s,
        "time": time.time()})
