"""Evaluation over several processes: whose rows, gathered outputs, one result.

Why a module of its own: in a multi-process JAX program every process calls
each compiled function the same number of times, with global arrays of the same
shapes. Decoding keeps that rule by giving every host the same view of an
eval set: each host reads the whole split (it is small and cached), cuts it
into the same padded global batches as a single process would, and feeds only
the rows of each batch that its own devices hold (`local_rows`). The outputs
are gathered to every host (`fetch`), so every host holds every prediction in
dataset order, and the per-batch sampling keys are those of a single-process
run: two processes x two devices decode exactly what one process x four
devices decodes.

What happens once happens on process 0 (`ofa_jax.multihost.is_leader`):
seqio metrics, prediction files, pictures. `share_from_leader` then hands its
JSON-able results to the other processes, so that every process returns the
same metrics (the trainer's writer, a caller's return value).

With one process every function here is a no-op or `jax.device_get`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import numpy as np

PyTree = Any


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def local_row_indices(partitioner: Any, batch_size: int) -> np.ndarray:
  """The rows of a global batch of `batch_size` this process feeds, ascending.

  They are the rows its devices hold under the partitioner's data sharding,
  in the order `jax.make_array_from_process_local_data` expects them (its
  slices of the batch axis by increasing start). A data axis that does not
  span processes gives every process all rows (each feeds the same data).
  """
  index_map = partitioner.data_sharding.addressable_devices_indices_map(
      (batch_size,))
  starts = {}
  for index in index_map.values():
    rows = index[0] if index else slice(None)
    start, stop, step = rows.indices(batch_size)
    if step != 1:
      raise ValueError(f"local_row_indices: the data sharding gives a strided "
                       f"slice {rows} of a batch of {batch_size} rows")
    starts[start] = stop
  return np.concatenate([np.arange(start, stop)
                         for start, stop in sorted(starts.items())])


def local_rows(partitioner: Any, batch: Mapping[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
  """This process's rows of a global host batch (all of it with one process)."""
  if not is_multiprocess():
    return dict(batch)
  size = len(next(iter(batch.values())))
  rows = local_row_indices(partitioner, size)
  return {k: np.asarray(v)[rows] for k, v in batch.items()}


def fetch(tree: PyTree) -> PyTree:
  """Device outputs as numpy, whole: gathered from every process when a leaf
  spans devices of other processes (a collective then: call it on all)."""
  leaves = jax.tree.leaves(tree)
  if not any(isinstance(x, jax.Array) and not x.is_fully_addressable
             for x in leaves):
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def share_from_leader(value: Any) -> Any:
  """Process 0's JSON-able `value` on every process (a collective with several
  processes: call it on all; the others' `value` is ignored, e.g. None).

  The value travels as UTF-8 JSON (its length first, so that every process
  passes arrays of one shape): floats come back exactly, tuples as lists.
  """
  if not is_multiprocess():
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  leader = jax.process_index() == 0
  payload = (np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
             if leader else np.zeros(0, np.uint8))
  length = int(multihost_utils.broadcast_one_to_all(
      np.asarray(len(payload), np.int32)))
  if not leader:
    payload = np.zeros(length, np.uint8)
  data = multihost_utils.broadcast_one_to_all(payload.astype(np.int32))
  if leader:
    return value
  return json.loads(np.asarray(data, np.uint8).tobytes().decode("utf-8"))
