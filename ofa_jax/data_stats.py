"""Counters that make "dropped and counted" observable.

Why this exists: an undecodable image, an empty audio clip or a too-short motion
clip must never crash an epoch and must never be replaced by zeros. The example is
dropped inside tf.data, and the drop has to reach the logs, otherwise a broken data
source silently trains on a fraction of its data. A tf.data pipeline runs in graph
mode (possibly on several threads), so the counts live in `tf.Variable`s that the
pipeline increments with `assign_add`; the host reads them with `snapshot()`.

Counters are not part of a tf.data iterator checkpoint (they are logs, not data
position): `filter_invalid` / `checkpointable` set the external-state policy that
lets such an iterator be saved at all.

Counters are created per task (an instance per task, never module-global state),
with one variable per reason, created on first use. Variables are created in the
eager context even when first requested while tracing a tf.data function
(`tf.init_scope`), so `count()` can be called from a `map` or `filter` function.
"""

from __future__ import annotations

import re
import threading
from typing import Callable, Iterable, Mapping

import tensorflow as tf

_REASON_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class SkipCounters:
  """Per-task counters of skipped / repaired examples, keyed by reason.

  Usage inside a pipeline:

    counters = SkipCounters("caption")
    ds = filter_invalid(ds, lambda ex: ex["valid"], counters, "undecodable_image")
    ...
    logging.info("%s", counters.snapshot())  # {"undecodable_image": 3}
  """

  def __init__(self, task: str, reasons: Iterable[str] = ()):
    if not isinstance(task, str) or not task:
      raise ValueError(f"SkipCounters needs a non-empty task name, got {task!r}")
    self.task = task
    self._variables: dict[str, tf.Variable] = {}
    self._lock = threading.Lock()
    for reason in reasons:
      self._variable(reason)

  def _variable(self, reason: str) -> tf.Variable:
    if not isinstance(reason, str) or not _REASON_RE.match(reason):
      raise ValueError(
          f"task {self.task!r}: a skip reason must be a non-empty identifier "
          f"([A-Za-z0-9_.-]), got {reason!r}")
    with self._lock:
      var = self._variables.get(reason)
      if var is None:
        # Lift out of any tf.function / tf.data trace: variables must be created
        # eagerly, once, and then captured by the traced functions.
        with tf.init_scope():
          var = tf.Variable(0, dtype=tf.int64, trainable=False,
                            name=f"skip_{reason}".replace(".", "_"))
        self._variables[reason] = var
      return var

  @property
  def reasons(self) -> tuple[str, ...]:
    return tuple(sorted(self._variables))

  def count(self, reason: str, amount: tf.Tensor | int = 1) -> tf.Tensor:
    """Adds `amount` (int or int tensor, scalar) to `reason`; returns the new total.

    Works eagerly and in graph mode (tf.data map / filter functions). The returned
    tensor depends on the update, so using it (or putting it in a control
    dependency) guarantees the increment runs.
    """
    var = self._variable(reason)
    return var.assign_add(tf.cast(amount, tf.int64), read_value=True)

  def count_if(self, reason: str, condition: tf.Tensor) -> tf.Tensor:
    """Counts one for `reason` when the boolean scalar `condition` is True."""
    return self.count(reason, tf.cast(tf.convert_to_tensor(condition, tf.bool),
                                      tf.int64))

  def snapshot(self) -> dict[str, int]:
    """The current totals, {reason: count}, as Python ints (for logs)."""
    with self._lock:
      items = list(self._variables.items())
    return {reason: int(var.numpy()) for reason, var in sorted(items)}

  def total(self) -> int:
    return sum(self.snapshot().values())

  def reset(self) -> None:
    """Zeroes every counter (e.g. at the start of an evaluation pass)."""
    with self._lock:
      variables = list(self._variables.values())
    for var in variables:
      var.assign(0)

  def __repr__(self) -> str:
    return f"SkipCounters(task={self.task!r}, counts={self.snapshot()})"


def merged_snapshot(counters: Iterable[SkipCounters]) -> dict[str, int]:
  """{"task/reason": count} over several tasks' counters (e.g. a mixture)."""
  out: dict[str, int] = {}
  for c in counters:
    for reason, n in c.snapshot().items():
      key = f"{c.task}/{reason}"
      out[key] = out.get(key, 0) + n
  return out


def filter_invalid(ds: tf.data.Dataset,
                   valid_fn: Callable[[Mapping[str, tf.Tensor]], tf.Tensor],
                   counters: SkipCounters,
                   reason: str) -> tf.data.Dataset:
  """Drops the examples for which `valid_fn(example)` is False, counting each drop.

  `valid_fn` must return a boolean scalar tensor. The counter variable is created
  here (eagerly), so the traced predicate only captures it.
  """
  counters._variable(reason)  # pylint: disable=protected-access

  def predicate(*args):
    example = args[0] if len(args) == 1 else args
    valid = tf.convert_to_tensor(valid_fn(example))
    if valid.dtype != tf.bool or valid.shape.rank not in (None, 0):
      raise ValueError(
          f"task {counters.task!r}: filter_invalid({reason!r}) needs valid_fn to "
          f"return a boolean scalar, got {valid.dtype.name} of shape {valid.shape}")
    update = counters.count_if(reason, tf.logical_not(valid))
    with tf.control_dependencies([update]):
      return tf.identity(valid)

  return checkpointable(ds.filter(predicate))


def checkpointable(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Lets the iterator of a pipeline with counters or guarded decoding be saved.

  tf.data refuses to serialize an iterator whose functions hold "external state"
  under its default policy. Two things of ours count as such: the counters'
  `assign_add`, and the nested one-element dataset by which the dense modalities
  guard their decoding (`image_ops.guarded`). Neither carries state from one
  example to the next that resuming would need: the counters are logs, not the
  data position, and a guard's dataset starts afresh for every example. So WARN is right: the
  iterator is saved and TF says the external state is not part of it. Options apply
  to the whole pipeline, so one call anywhere in it is enough; `filter_invalid`
  makes it for you.
  """
  options = tf.data.Options()
  options.experimental_external_state_policy = (
      tf.data.experimental.ExternalStatePolicy.WARN)
  return ds.with_options(options)
