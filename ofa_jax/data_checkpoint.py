"""tf.data iterator states in a checkpoint, so a resume does not replay the input.

Why: resuming by skipping the consumed batches re-reads and re-decodes every one
of them (at step 100,000 of an image mixture: hours per restart). A tf.data
iterator can instead serialize its state (positions in the sources, the random
state of shuffles and samplers, the examples in shuffle buffers) and continue
from it exactly; the cost of a restore is that of reading the state, whatever
the step.

What this module provides, one piece each:

* `unsupported_ops`: which ops of a pipeline tf.data cannot checkpoint faithfully.
  tf.data saves the state of its own datasets only; an op whose hidden state
  decides the elements (the Python generator behind `Dataset.from_generator`,
  a stateful random op) would silently restart or diverge after a restore, so
  such a pipeline resumes by skipping instead. A `tf.py_function` or
  `tf.numpy_function` map (the tokenizers of this project) is taken to be a
  pure function of its inputs, as a function mapped over a dataset must be
  anyway for the input to be deterministic.
* `serialize` / `restore_into`: an iterator's state as bytes, captured at once
  (the iterator goes on while the checkpoint is written), and back.
* `IteratorStatesHandler` with `IteratorStatesSave`: an orbax item holding one
  file per input shard, ``shard_<k>.tfdata``, each written by the process that
  reads shard k. Per shard rather than per host, so a run may resume on another
  number of hosts (the global batch depends on the shards only).

Size: what the pipeline buffers, chiefly the per-task shuffle buffers of seqio
(1000 preprocessed examples each by default), with prefetch buffers recomputed
instead of stored (tf.data's symbolic checkpointing). Smaller
`shuffle_buffer_size` on a task means smaller checkpoints. seqio also caches
a source of known small size (under 10,000 examples a shard) in memory; until
its first epoch is read, the partial cache is part of the state too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import orbax.checkpoint as ocp
import tensorflow as tf

ITEM = "data_iterator"
# Added by `CheckpointManager.restore` to a saved position: the step's directory
# of per-shard iterator states, when the checkpoint has one.
ITERATOR_STATE_DIR = "iterator_state_dir"

# Ops whose hidden state decides which elements come next, and that a tf.data
# iterator checkpoint does not hold: after a restore they would start over (a
# generator) or draw other numbers (stateful random ops), silently. Other ops
# registered as stateful are not listed: control flow, lookup tables and
# tokenizer resources (read-only), the `tf.Variable` counters of
# `data_stats` (statistics, not data), nested datasets (checkpointed by
# tf.data), and tf.py_function / tf.numpy_function maps, which are taken to be
# pure functions of their inputs, as any function mapped over a dataset must be
# for the input to be deterministic at all.
_HIDDEN_STATE_OPS = {
    "GeneratorDataset": "Dataset.from_generator: its position is in Python",
    **{op: "a stateful random op: its generator state is not saved"
       for op in ("RandomUniform", "RandomUniformInt", "RandomStandardNormal",
                  "TruncatedNormal", "RandomShuffle", "RandomGamma",
                  "RandomPoisson", "RandomPoissonV2", "Multinomial",
                  "ParameterizedTruncatedNormal", "StatefulUniform",
                  "StatefulUniformInt", "StatefulUniformFullInt",
                  "StatefulStandardNormal", "StatefulStandardNormalV2",
                  "StatefulTruncatedNormal", "StatefulRandomBinomial",
                  "RngSkip", "RngReadAndSkip")},
}

_IGNORE = tf.data.experimental.ExternalStatePolicy.IGNORE


def checkpointable_options() -> tf.data.Options:
  """Options for a pipeline whose iterator is checkpointed.

  Symbolic checkpoints store positions instead of the elements of prefetch and
  parallel-map buffers (those are recomputed after a restore). The external
  state policy is IGNORE because `unsupported_ops` has decided beforehand.
  """
  options = tf.data.Options()
  options.experimental_symbolic_checkpoint = True
  options.experimental_external_state_policy = _IGNORE
  return options


def unsupported_ops(dataset: tf.data.Dataset) -> list[str]:
  """The ops of `dataset` whose state an iterator checkpoint misses, each with
  why (empty: its iterator state resumes it exactly)."""
  serialized = dataset._as_serialized_graph(  # pylint: disable=protected-access
      external_state_policy=_IGNORE)
  graph = tf.compat.v1.GraphDef.FromString(serialized.numpy())
  ops = {n.op for n in graph.node}
  ops |= {n.op for f in graph.library.function for n in f.node_def}
  return [f"{op} ({_HIDDEN_STATE_OPS[op]})" for op in sorted(ops)
          if op in _HIDDEN_STATE_OPS]


def serialize(iterator: Any) -> bytes:
  """The state of a tf.data iterator (from `iter(dataset)`), as bytes."""
  tensors = iterator._serialize_to_tensors()  # pylint: disable=protected-access
  (state,) = tensors.values()
  return tf.io.serialize_tensor(state).numpy()


def restore_into(iterator: Any, blob: bytes, where: str) -> None:
  """Sets a fresh iterator of the same pipeline to the state in `blob`."""
  key, = iterator._serialize_to_tensors()  # pylint: disable=protected-access
  try:
    state = tf.io.parse_tensor(blob, tf.variant)
    iterator._restore_from_tensors({key: state})  # pylint: disable=protected-access
  except (tf.errors.OpError, ValueError) as e:
    message = getattr(e, "message", str(e)).strip().splitlines()[0]
    raise ValueError(
        f"the input iterator state {where} does not fit this input pipeline "
        f"({message}): the pipeline changed since the checkpoint (tasks, "
        "preprocessors or feature lengths). Restore the settings, use a new "
        "MODEL_DIR, or pass --gin.RESET_DATA_POSITION=True to start the data "
        "afresh.") from None


def state_file(directory: str, shard: int) -> str:
  return os.path.join(directory, f"shard_{shard}.tfdata")


@dataclasses.dataclass
class IteratorStatesSave(ocp.args.CheckpointArgs):
  """The serialized iterator state of each input shard this process reads."""

  states: Mapping[int, bytes]


@dataclasses.dataclass
class IteratorStatesRestore(ocp.args.CheckpointArgs):
  """Gives the item's directory (orbax wants a restore type for each handler)."""


class IteratorStatesHandler(ocp.CheckpointHandler):
  """One file per input shard, written by the process that reads the shard.

  Orbax gives every process the same temporary item directory and renames the
  step when all have written, so a step holds all shards or is not a step.
  Restoring is done by the iterators themselves (`DataIterator.restore` reads
  its shards' files from the step directory); `restore` names the directory.
  """

  def save(self, directory: Any, args: IteratorStatesSave) -> None:
    os.makedirs(os.fspath(directory), exist_ok=True)
    for shard, blob in args.states.items():
      with open(state_file(os.fspath(directory), shard), "wb") as f:
        f.write(blob)

  def restore(self, directory: Any, args: Any = None) -> str:
    del args
    return os.fspath(directory)


ocp.args.register_with_handler(IteratorStatesHandler, for_save=True)(
    IteratorStatesSave)
ocp.args.register_with_handler(IteratorStatesHandler, for_restore=True)(
    IteratorStatesRestore)
