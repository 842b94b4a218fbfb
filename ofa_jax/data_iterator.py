"""The training input: SeqIO mixtures as host-local numpy batches, resumable exactly.

How the position is made exact: the pipeline is a pure function of
(mixture, split, feature lengths, seed, number of input shards, batch size):
`seqio.get_dataset(..., shuffle=True, seed=S, num_epochs=None)` shuffles, mixes
(mixing rates) and derives per-example seeds deterministically from `S`, and
tf.data keeps element order (`deterministic` is never turned off). The position is
therefore just the number of batches consumed; a resumed run rebuilds the same
pipeline and skips that many batches (`Dataset.skip`).

Cost: the skipped batches are still read and preprocessed, so a resume costs
about (steps done) x (input time per step) on the host (the trainer reports it).
The alternative, a tf.data iterator checkpoint, is O(1) but stores the shuffle
buffers and fails for pipelines with Python functions; exactness for every task
won over resume speed. Use cached tasks (`use_cached=True`) to make skipping cheap.

Input shards and hosts: the global batch is the concatenation, in shard order, of
`num_shards` per-shard batches (`seqio.ShardInfo(i, num_shards)`, each
`batch_size / num_shards` examples). Each host reads a contiguous block of shards.
Because the batch depends on `num_shards` and not on the number of hosts, one
process with 4 devices and two processes with 2 devices each see the same global
batches (the multi-host test relies on it).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np
import seqio
import tensorflow as tf


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


class DataIterator:
  """Host-local numpy batches of the global batch, with a JSON-able position."""

  def __init__(self, config: DataConfig, feature_converter: seqio.FeatureConverter,
               *, start_batch: int = 0,
               process_index: Optional[int] = None,
               process_count: Optional[int] = None):
    self.config = config
    self._converter = feature_converter
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
    self._batches = int(start_batch)
    self._iter: Optional[Iterator[Mapping[str, np.ndarray]]] = None
    self._ds = self._build(self._batches)

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
    return ds.skip(skip) if skip else ds

  def _build(self, skip: int) -> tf.data.Dataset:
    """The pipeline from batch `skip` on; iterated lazily (nothing is read yet)."""
    shards = [self._shard_dataset(i, skip) for i in self._shards]
    if len(shards) == 1:
      ds = shards[0]
    else:
      ds = tf.data.Dataset.zip(tuple(shards)).map(
          lambda *bs: {k: tf.concat([b[k] for b in bs], 0) for k in bs[0]})
    self.element_spec = ds.element_spec
    self._skip = skip
    return ds.prefetch(2)

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> Mapping[str, np.ndarray]:
    if self._iter is None:
      if self._skip:
        logging.info("data: skipping %d consumed batches to resume exactly "
                     "(they are read and preprocessed again)", self._skip)
      self._iter = self._ds.as_numpy_iterator()
    batch = next(self._iter)
    self._batches += 1
    return batch

  def position(self) -> dict[str, Any]:
    """What a checkpoint stores: the batch count plus what it is relative to."""
    c = self.config
    return {"batches_consumed": self._batches,
            "mixture_or_task_name": c.mixture_or_task_name,
            "split": c.split, "seed": c.seed, "batch_size": c.batch_size,
            "num_shards": c.resolved_num_shards(),
            "task_feature_lengths": dict(c.task_feature_lengths)}

  def check_position(self, position: Mapping[str, Any]) -> int:
    """The batch count of a saved position; raises when it is for another stream."""
    mine = self.position()
    keys = ("mixture_or_task_name", "split", "seed", "batch_size", "num_shards",
            "task_feature_lengths")
    diff = [f"{k}: checkpoint {position.get(k)!r} vs now {mine[k]!r}"
            for k in keys if k in position and position[k] != mine[k]]
    if diff:
      raise ValueError("the checkpoint's input position belongs to a different "
                       "input stream, so the run cannot resume exactly ("
                       + "; ".join(diff) + "). Use a new MODEL_DIR or restore the "
                       "settings.")
    return int(position["batches_consumed"])

  def restore(self, position: Mapping[str, Any]) -> None:
    """Rebuilds the pipeline at the saved position (see the module docstring)."""
    self._batches = self.check_position(position)
    self._iter = None
    self._ds = self._build(self._batches)
