"""The training input: SeqIO mixtures as host-local numpy batches, resumable exactly.

How the position is made exact: the pipeline is a pure function of
(mixture, split, feature lengths, seed, number of input shards, batch size):
`seqio.get_dataset(..., shuffle=True, seed=S, num_epochs=None)` shuffles, mixes
(mixing rates) and derives per-example seeds deterministically from `S`, and
tf.data keeps element order (`deterministic` is never turned off).

How a resume finds its place, without replaying the input: every checkpoint
holds, besides the batch count, the state of each input shard's tf.data
iterator (`data_checkpoint`: source positions, shuffle and sampler random
states, the examples in the shuffle buffers). A resumed run rebuilds the same
pipeline and loads those states. Cost: reading the states (their size is that
of the shuffle buffers, not the step), the same at step 100 as at step 100,000;
saving serializes them on the training thread at each checkpoint.

When that cannot be exact, it is not used, and the log says why (at start-up
and at the resume): a pipeline with ops whose hidden state tf.data does not
save (a `Dataset.from_generator` source, a stateful random op: see
`data_checkpoint.unsupported_ops`), or a checkpoint written without iterator
states, resumes by skipping the consumed batches (`Dataset.skip`): they are
read and preprocessed again, about (steps done) x (input time per step) on the
host. Use cached tasks (`use_cached=True`) to make that cheaper.

A checkpoint of another input stream (mixture, its tasks and rates, split,
seed, batch size, shards, feature lengths or features) is refused, naming what
changed; `reset_position=True` (the trainer's `RESET_DATA_POSITION`) starts the
data afresh instead, with a log line.

Input shards and hosts: the global batch is the concatenation, in shard order, of
`num_shards` per-shard batches (`seqio.ShardInfo(i, num_shards)`, each
`batch_size / num_shards` examples). Each host reads a contiguous block of shards,
one iterator per shard. Because the batch depends on `num_shards` and not on the
number of hosts, one process with 4 devices and two processes with 2 devices
each see the same global batches (the multi-host test relies on it), and the
per-shard iterator states resume on any number of hosts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
import seqio
import tensorflow as tf

from ofa_jax import data_checkpoint


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What defines the stream of training batches (t5x's DatasetConfig, slimmed)."""

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int  # global, over all hosts
  split: str = "train"
  shuffle: bool = True
  seed: int = 0
  use_cached: bool = False
  num_shards: Optional[int] = None  # input shards; default: jax.process_count()

  def resolved_num_shards(self) -> int:
    return self.num_shards or jax.process_count()



# The keys of a position that say which input stream it belongs to.
_STREAM_KEYS = ("mixture_or_task_name", "split", "seed", "batch_size",
                "num_shards", "task_feature_lengths", "mixture_tasks",
                "features")


def _mixture_tasks(name: str) -> dict[str, float]:
  """Each task of a mixture (or the task itself) with its mixing rate."""
  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    return {t.name: float(provider.get_rate(t)) for t in provider.tasks}
  return {provider.name: 1.0}


class DataIterator:
  """Host-local numpy batches of the global batch, with a JSON-able position.

  `reset_position`: `restore` ignores the saved position and starts the input
  afresh (logged), for a run whose input pipeline changed on purpose.
  """

  def __init__(self, config: DataConfig, feature_converter: seqio.FeatureConverter,
               *, start_batch: int = 0,
               process_index: Optional[int] = None,
               process_count: Optional[int] = None,
               reset_position: bool = False):
    self.config = config
    self._converter = feature_converter
    self._reset_position = bool(reset_position)
    self._pid = jax.process_index() if process_index is None else process_index
    self._nproc = jax.process_count() if process_count is None else process_count
    n = config.resolved_num_shards()
    if n % self._nproc:
      raise ValueError(f"DataConfig.num_shards={n} must be a multiple of the "
                       f"{self._nproc} processes")
    if config.batch_size % n:
      raise ValueError(f"DataConfig.batch_size={config.batch_size} must be a "
                       f"multiple of num_shards={n}")
    per_host = n // self._nproc
    self._shards = range(self._pid * per_host, (self._pid + 1) * per_host)
    self._mixture_tasks = _mixture_tasks(config.mixture_or_task_name)
    self._batches = int(start_batch)
    self._iters: Optional[list[Any]] = None
    self._datasets = self._build(self._batches)
    spec = self._datasets[0].element_spec
    self.element_spec = spec
    self._features = {k: f"{v.dtype.name}{list(v.shape[1:])}"
                      for k, v in sorted(spec.items())}
    self._unsupported = data_checkpoint.unsupported_ops(self._datasets[0])
    if self._unsupported:
      logging.warning(
          "data: the input pipeline has ops whose state a tf.data iterator "
          "checkpoint cannot hold (%s): checkpoints store the batch count "
          "only, and a resume skips the consumed batches (its cost grows "
          "with the step)", ", ".join(self._unsupported))

  @property
  def host_batch_size(self) -> int:
    return self.config.batch_size // self._nproc

  def _shard_dataset(self, index: int, skip: int) -> tf.data.Dataset:
    c = self.config
    n = c.resolved_num_shards()
    ds = seqio.get_dataset(
        c.mixture_or_task_name, task_feature_lengths=dict(c.task_feature_lengths),
        feature_converter=self._converter, dataset_split=c.split,
        use_cached=c.use_cached, shuffle=c.shuffle, num_epochs=None,
        shard_info=seqio.ShardInfo(index=index, num_shards=n) if n > 1 else None,
        verbose=False, seed=c.seed)
    ds = ds.batch(c.batch_size // n, drop_remainder=True)
    if skip:
      ds = ds.skip(skip)
    return ds.prefetch(2).with_options(data_checkpoint.checkpointable_options())

  def _build(self, skip: int) -> list[tf.data.Dataset]:
    """This host's shard pipelines from batch `skip` on (nothing is read yet)."""
    self._skip = skip
    self._iters = None
    return [self._shard_dataset(i, skip) for i in self._shards]

  def _iterators(self) -> list[Any]:
    if self._iters is None:
      if self._skip:
        logging.info("data: skipping %d consumed batches to resume exactly "
                     "(they are read and preprocessed again)", self._skip)
      self._iters = [iter(ds) for ds in self._datasets]
    return self._iters

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> Mapping[str, np.ndarray]:
    parts = [next(it) for it in self._iterators()]
    self._batches += 1
    if len(parts) == 1:
      return {k: v.numpy() for k, v in parts[0].items()}
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

  def position(self) -> dict[str, Any]:
    """What a checkpoint stores: the batch count plus what it is relative to."""
    c = self.config
    return {"batches_consumed": self._batches,
            "mixture_or_task_name": c.mixture_or_task_name,
            "split": c.split, "seed": c.seed, "batch_size": c.batch_size,
            "num_shards": c.resolved_num_shards(),
            "task_feature_lengths": dict(c.task_feature_lengths),
            "mixture_tasks": dict(self._mixture_tasks),
            "features": dict(self._features),
            "iterator_state": ("saved" if not self._unsupported else
                               "not saved: " + ", ".join(self._unsupported))}

  def iterator_states(self) -> Optional[dict[int, bytes]]:
    """Each of this host's shards' iterator state (None: cannot be saved).

    Captured now, so the checkpoint is at `position()` even when written later.
    """
    if self._unsupported:
      return None
    try:
      t0 = time.time()
      states = {shard: data_checkpoint.serialize(it)
                for shard, it in zip(self._shards, self._iterators())}
      logging.info("data: input iterator states of %d shard(s) at batch %d: "
                   "%.1f MB, serialized in %.2fs", len(states), self._batches,
                   sum(map(len, states.values())) / 1e6, time.time() - t0)
      return states
    except tf.errors.OpError as e:
      # A dataset tf.data cannot save (its kernel says so): from now on this
      # run's checkpoints hold the batch count only.
      self._unsupported = [f"saving failed: {e.message.strip().splitlines()[0]}"]
      logging.warning("data: the input iterator state cannot be saved (%s); "
                      "checkpoints store the batch count only, and a resume "
                      "skips the consumed batches", self._unsupported[0])
      return None

  def check_position(self, position: Mapping[str, Any]) -> int:
    """The batch count of a saved position; raises when it is for another stream."""
    mine = self.position()
    diff = [f"{k}: checkpoint {position.get(k)!r} vs now {mine[k]!r}"
            for k in _STREAM_KEYS if k in position and position[k] != mine[k]]
    if diff:
      raise ValueError("the checkpoint's input position belongs to a different "
                       "input stream, so the run cannot resume exactly ("
                       + "; ".join(diff) + "). Use a new MODEL_DIR, restore the "
                       "settings, or pass --gin.RESET_DATA_POSITION=True to "
                       "start the data afresh.")
    return int(position["batches_consumed"])

  def restore(self, position: Mapping[str, Any]) -> None:
    """Continues the input where `position` was saved (module docstring)."""
    if self._reset_position:
      logging.warning(
          "data: RESET_DATA_POSITION: the checkpoint's input position (batch "
          "%s of %s) is ignored; the input starts afresh from its first batch",
          position.get("batches_consumed"),
          position.get("mixture_or_task_name"))
      self._batches = 0
      self._datasets = self._build(0)
      return
    batches = self.check_position(position)
    files = self._state_files(position.get(data_checkpoint.ITERATOR_STATE_DIR))
    why_not = self._why_not_from_states(position, files)
    if why_not:
      logging.warning("data: resuming by skipping %d consumed batches (read "
                      "and preprocessed again; the cost grows with the step): "
                      "%s", batches, why_not)
      self._batches = batches
      self._datasets = self._build(batches)
      return
    t0 = time.time()
    self._datasets = self._build(0)
    size = 0
    for it, path in zip(self._iterators(), files):
      with open(path, "rb") as f:
        blob = f.read()
      size += len(blob)
      data_checkpoint.restore_into(it, blob, f"in {path}")
    self._batches = batches
    logging.info("data: input position (batch %d) restored from the iterator "
                 "states of %d shard(s), %.1f MB, in %.2fs", batches,
                 len(files), size / 1e6, time.time() - t0)

  def _state_files(self, directory: Optional[str]) -> list[str]:
    if not directory:
      return []
    return [data_checkpoint.state_file(directory, shard)
            for shard in self._shards]

  def _why_not_from_states(self, position: Mapping[str, Any],
                           files: list[str]) -> Optional[str]:
    """Why the saved iterator states cannot be used (None: they can)."""
    if self._unsupported:
      return ("the input pipeline has ops whose state an iterator checkpoint "
              "cannot hold: " + ", ".join(self._unsupported))
    if not files:
      saved = position.get("iterator_state")
      if saved is None:
        return ("the checkpoint holds no input iterator state (written before "
                "iterator states were saved)")
      if saved == "saved":
        return ("the checkpoint's position says iterator states were saved, "
                f"but its step has no {data_checkpoint.ITEM!r} item")
      return f"the checkpoint holds no input iterator state ({saved})"
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
      return "the checkpoint lacks the iterator states " + ", ".join(missing)
    return None
