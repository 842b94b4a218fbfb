"""Writing a seqio offline cache of a task, with a frozen head applied on the way.

Why: a target that a frozen head tokenizes (image targets through the VQGAN) can
be tokenized inside every train step, or once, offline. The offline way writes
what seqio's `CacheDatasetPlaceholder` convention expects (the layout that
`seqio.cache_tasks_main` writes and `Task.get_dataset(use_cached=True)` reads):

    <cache_dir>/<task dir>/info.<split>.json     feature shapes and dtypes
    <cache_dir>/<task dir>/stats.<split>.json    {"examples": n, ...}
    <cache_dir>/<task dir>/<split>.tfrecord-00000-of-00001
    <cache_dir>/<task dir>/COMPLETED             written last

The examples are the task's own pre-cache preprocessing (`preprocess_precache`,
i.e. the features built without `sequence_length`) with the head's ids written
at their placeholder positions and the dense stream dropped. A task must be
registered with `offline_cache=True` (the placeholder). The directory is
written under a temporary name and renamed when complete, so a crash never
leaves a cache that seqio would take for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

Transform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def task_cache_dir(cache_root: str, task_name: str) -> str:
  """Where seqio looks for the cache of `task_name` under `cache_root`."""
  return os.path.join(cache_root, seqio.utils.get_task_dir_from_name(task_name))


def _batches(examples: Iterable[Mapping[str, np.ndarray]], batch_size: int,
             group_key: Callable[[Mapping[str, np.ndarray]], Any]
             ) -> Iterable[list[dict[str, np.ndarray]]]:
  """Consecutive examples of one shape group, up to batch_size at a time."""
  pending: list[dict[str, np.ndarray]] = []
  key = None
  for ex in examples:
    ex = {k: np.asarray(v) for k, v in ex.items()}
    k = group_key(ex)
    if pending and (k != key or len(pending) == batch_size):
      yield pending
      pending = []
    key = k
    pending.append(ex)
  if pending:
    yield pending


def _apply_batched(transform: Transform, batch: list[dict[str, np.ndarray]],
                   batch_size: int, keys: Sequence[str]
                   ) -> list[dict[str, np.ndarray]]:
  """`transform` on the `keys` of a stacked batch padded to batch_size (one
  compilation per shape of those keys), unstacked and merged back."""
  n = len(batch)
  stacked = {k: np.stack([ex[k] for ex in batch] + [batch[-1][k]] * (batch_size - n))
             for k in keys}
  out = {k: np.asarray(jax.device_get(v)) for k, v in transform(stacked).items()}
  return [{**ex, **{k: v[i] for k, v in out.items()}}
          for i, ex in enumerate(batch)]


def _feature_info(examples: Sequence[Mapping[str, np.ndarray]]
                  ) -> dict[str, dict[str, Any]]:
  """seqio's info JSON: the leading axis of a non-scalar feature is variable."""
  info = {}
  for k, v in examples[0].items():
    shape = [None] + list(v.shape[1:]) if v.ndim else []
    for ex in examples[1:]:
      if ex[k].ndim != v.ndim or tuple(ex[k].shape[1:]) != tuple(v.shape[1:]):
        raise ValueError(f"feature {k!r}: shapes {v.shape} and {ex[k].shape} "
                         "differ beyond the leading axis; cannot cache")
    info[k] = {"shape": shape, "dtype": tf.as_dtype(v.dtype).name}
  return info


def _tf_example(ex: Mapping[str, np.ndarray]) -> bytes:
  feature = {}
  for k, v in ex.items():
    flat = np.asarray(v).reshape(-1)
    if flat.dtype.kind in "iub":
      feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(
          value=flat.astype(np.int64).tolist()))
    elif flat.dtype.kind == "f":
      feature[k] = tf.train.Feature(float_list=tf.train.FloatList(
          value=flat.astype(np.float32).tolist()))
    else:
      feature[k] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[x if isinstance(x, bytes) else str(x).encode() for x in flat]))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def write_task_cache(task: seqio.Task, cache_root: str, transform: Transform,
                     keys: Sequence[str], *,
                     splits: Sequence[str] = ("train", "validation"),
                     batch_size: int = 16, max_examples: Optional[int] = None,
                     overwrite: bool = False) -> dict[str, int]:
  """Writes the offline cache of `task`; returns {split: examples written}.

  `transform` maps the features `keys` of a stacked batch of pre-cache task
  features to the cached ones (e.g. `ImageCodeHead.tokenize_task_features`
  with its variables); the other features are cached as they are. Only `keys`
  enter the transform, so examples of different text lengths share batches
  (and one compilation) when those features have one shape.
  """
  if not task.supports_caching:
    raise ValueError(f"task {task.name!r} has no CacheDatasetPlaceholder: "
                     "register it with offline_cache=True")
  final = task_cache_dir(cache_root, task.name)
  if os.path.exists(os.path.join(final, "COMPLETED")) and not overwrite:
    raise ValueError(f"{final} already holds a completed cache of "
                     f"{task.name!r}; pass overwrite=True to rewrite it")
  tmp = f"{final}.incomplete-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  counts = {}
  for split in splits:
    ds = task.source.get_dataset(split=split, shuffle=False)
    ds = task.preprocess_precache(ds)
    if max_examples is not None:
      ds = ds.take(max_examples)
    written: list[dict[str, np.ndarray]] = []
    path = seqio.utils.get_cached_tfrecord_prefix(tmp, split) + "-00000-of-00001"
    with tf.io.TFRecordWriter(path) as writer:
      shape_key = lambda ex: tuple(np.shape(ex[k]) for k in keys)  # noqa: E731
      for batch in _batches(ds.as_numpy_iterator(), batch_size, shape_key):
        for ex in _apply_batched(transform, batch, batch_size, keys):
          # Streams empty by construction (a zero-sized trailing axis, which
          # seqio's reader cannot parse) are left out; the task's post-cache
          # step puts them back.
          ex = {k: v for k, v in ex.items() if 0 not in v.shape[1:]}
          writer.write(_tf_example(ex))
          if len(written) < 64:  # enough to check the shapes agree
            written.append(ex)
          counts[split] = counts.get(split, 0) + 1
    if not counts.get(split):
      raise ValueError(f"task {task.name!r}, split {split!r}: no examples to cache")
    with open(seqio.utils.get_cached_info_path(tmp, split), "w") as f:
      json.dump({"features": _feature_info(written), "num_shards": 1,
                 "seqio_version": seqio.__version__}, f, indent=1)
    with open(seqio.utils.get_cached_stats_path(tmp, split), "w") as f:
      json.dump({"examples": counts[split]}, f)
  with open(os.path.join(tmp, "COMPLETED"), "w") as f:
    f.write("")
  if os.path.exists(final):
    shutil.rmtree(final)
  os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
  os.replace(tmp, final)
  return counts
