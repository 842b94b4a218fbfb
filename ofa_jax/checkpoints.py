"""Orbax checkpoints: periodic async saves, keep-last-N, exact resume, fine-tune loads.

Why a thin wrapper over `ocp.CheckpointManager`: orbax already writes each step
into a temporary directory and renames it when complete (so a kill mid-save never
leaves a step that looks finished), saves asynchronously, and deletes old steps.
What we add is the layout of one step and the checks:

* ``state``: the `TrainState` (step, params, optimizer state), sharded arrays;
* ``data``: the input position (JSON), so a resumed run sees the same examples;
* ``data_iterator``: the tf.data iterator state of each input shard, one file
  per shard written by the process reading it (`data_checkpoint`), so that the
  position is restored without replaying the input; absent when the pipeline
  cannot be checkpointed (the position is then a batch count to skip);
* ``meta``: what produced it (JSON: mixture, batch size, seed, ...).

The state is saved as a plain nested dict (`flax.serialization.to_state_dict`), so
the on-disk tree does not depend on Python classes. Every array tree this project
writes (train states, converted checkpoints, VQGANs) goes through
`array_tree_handler`, which turns off orbax's replica-parallel writes in a
single process (why: its docstring).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
# orbax exports the store of the default `jax.Array` handler (it records PRNG key
# types and write shapes next to the arrays) from its private tree only.
from orbax.checkpoint._src.metadata import array_metadata_store

from ofa_jax import data_checkpoint
from ofa_jax import multihost
from ofa_jax import run_dir

STATE, DATA, META = run_dir.STATE, run_dir.DATA, run_dir.META
DATA_ITERATOR = data_checkpoint.ITEM


class CheckpointError(ValueError):
  """A checkpoint is missing, or does not fit the model it is loaded into."""


class DamagedCheckpointError(CheckpointError):
  """Every step of a run directory failed to read back."""


# What reading a damaged step raises: tensorstore reports truncated or missing
# array files as ValueError (OUT_OF_RANGE, NOT_FOUND), a broken JSON item is a
# JSONDecodeError (a ValueError), a missing folder or file an OSError; a tree
# that lost entries surfaces as KeyError or TypeError. A model that does not fit
# the checkpoint (`CheckpointError`) is not damage and is re-raised.
_READ_ERRORS = (ValueError, OSError, KeyError, TypeError)


def _nonempty(tree: Any) -> Any:
  """Orbax does not store empty containers (optax EmptyState); mark them."""
  if isinstance(tree, dict):
    if not tree:
      return {"__empty__": np.zeros((), np.int8)}
    return {k: _nonempty(v) for k, v in tree.items()}
  return tree


def _restore_empty(tree: Any) -> Any:
  if isinstance(tree, dict):
    if set(tree) == {"__empty__"}:
      return {}
    return {k: _restore_empty(v) for k, v in tree.items()}
  return tree


def array_tree_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's pytree handler; in a single process, without replica-parallel writes.

  Why: orbax's default `jax.Array` handler cuts an array that several devices
  hold into one slice per replica, so that each replica writes its own part.
  Cutting runs a small XLA program per array shape, compiled at the first save
  of a tree. When one process drives every device, all the slices are written
  by that process anyway: the split saves no time and its compiles cost more
  than the write (first save of the `demo` preset's train state on 8 CPU
  devices: 12.2 s with it, 2.1 s without; the toy state of
  tests/test_checkpoints.py: 2.3 s against 0.15 s). With several processes,
  each host writing a slice of a replicated array does spread the work, so
  orbax's default is kept there.

  The format is the same either way (only the chunking of replicated arrays
  differs): a checkpoint written by one loads with the other, and with
  `ocp.StandardCheckpointer` / `ocp.PyTreeCheckpointer`. The other leaf types
  keep orbax's registered handlers.
  """
  if jax.process_count() > 1:
    return ocp.PyTreeCheckpointHandler()
  arrays = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False,
      array_metadata_store=array_metadata_store.Store())
  registry = ocp.type_handlers.create_type_handler_registry(
      *((t, ocp.type_handlers.get_type_handler(t))
        for t in (int, float, bytes, np.number, np.ndarray, str)),
      (jax.Array, arrays))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def save_array_tree(directory: str, tree: Mapping[str, Any], *,
                    force: bool = False) -> None:
  """Writes `tree` (nested dicts of arrays) as an orbax checkpoint; returns when
  it is on disk. Orbax writes into a temporary folder and renames it when
  complete. `force`: replace an existing `directory` (else it is an error)."""
  checkpointer = ocp.Checkpointer(array_tree_handler())
  try:
    checkpointer.save(directory, args=ocp.args.PyTreeSave(tree), force=force)
  finally:
    checkpointer.close()


def _abstract_leaf(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  sharding = getattr(x, "sharding", None)
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


class CheckpointManager:
  """Saves and restores (state, data position, meta) under `directory`.

  All processes must call `save`/`restore` (orbax coordinates multi-host writes;
  each host writes its own shards).
  """

  def __init__(self, directory: str, *, save_period: int = 1000,
               keep: Optional[int] = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_period = max(int(save_period), 1)
    # The period is decided here (orbax would also save the very first step).
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self._mgr = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=(STATE, DATA, META, DATA_ITERATOR),
        item_handlers={STATE: array_tree_handler(),
                       DATA_ITERATOR: data_checkpoint.IteratorStatesHandler()})

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def save(self, step: int, state: Any, data_position: Mapping[str, Any],
           meta: Mapping[str, Any], *, force: bool = False,
           data_iterator_states: Optional[Mapping[int, bytes]] = None) -> bool:
    """Starts a save when `step` is on the period (or `force`); returns whether.

    `data_iterator_states`: this process's input shards' iterator states
    (`DataIterator.iterator_states()`), or None when there are none.
    """
    if not force and step % self.save_period:
      return False
    if step in self._mgr.all_steps():
      return False
    args = ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave(_nonempty(
            flax.serialization.to_state_dict(state))),
        DATA: ocp.args.JsonSave(dict(data_position)),
        META: ocp.args.JsonSave(dict(meta)),
        **({} if data_iterator_states is None else {
            DATA_ITERATOR: data_checkpoint.IteratorStatesSave(
                dict(data_iterator_states))}),
    })
    saved = self._mgr.save(int(step), args=args, force=True)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state: Any, step: Optional[int] = None
              ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(state, data position, meta) of `step` (default: the latest).

    The position names the step's directory of input iterator states, when it
    has one (under `data_checkpoint.ITERATOR_STATE_DIR`).

    `abstract_state` is the state's structure with `jax.ShapeDtypeStruct` leaves
    carrying the target shardings (or real arrays, whose shardings are used).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    target = jax.tree.map(_abstract_leaf, abstract_state)
    target_dict = _nonempty(flax.serialization.to_state_dict(target))
    _check_shapes(self._state_metadata(step), target_dict,
                  f"{self.directory}/{step}/{STATE}")
    restored = self._mgr.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(
            item=target_dict,
            restore_args=ocp.checkpoint_utils.construct_restore_args(
                target_dict)),
        DATA: ocp.args.JsonRestore(),
        META: ocp.args.JsonRestore(),
    }))
    state = flax.serialization.from_state_dict(
        target, _restore_empty(restored[STATE]))
    position = dict(restored[DATA] or {})
    states = os.path.join(self.directory, str(step), DATA_ITERATOR)
    if os.path.isdir(states):
      position[data_checkpoint.ITERATOR_STATE_DIR] = states
    return state, position, dict(restored[META] or {})

  def restore_latest(self, abstract_state: Any
                     ) -> Optional[tuple[int, Any, dict[str, Any], dict[str, Any]]]:
    """(step, state, data position, meta) of the newest step that reads back.

    Why: orbax renames a step folder only once it is complete, but a finished
    step can still be damaged later (a full disk, an interrupted copy, a
    truncated file). A restart then falls back instead of failing: each step
    that does not read back is named in a warning with the reason, and the next
    older one is tried. Damaged steps are moved aside, not deleted, to
    `run_dir.damaged_checkpoint_dir` (`<dir>/damaged/<step>`): kept for
    inspection, and out of the way of the run saving that step number again.
    None when there is no step; `DamagedCheckpointError` naming every step and
    its reason when none reads back (nothing is moved then). A model that does
    not fit the checkpoint raises `CheckpointError` at once.

    Every host must call it: whether a step is good is agreed between hosts
    (`multihost.any_host`), so that all restore the same one. The limit: a
    damage that only one host meets while reading its shards makes that host
    leave orbax's restore early, and the others fail at orbax's restore barrier
    instead (an error on every host, not a fallback).
    """
    damaged: list[tuple[int, str]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored, reason = self.restore(abstract_state, step), ""
      except CheckpointError:
        raise  # the model does not fit: an older step would not fit either
      except _READ_ERRORS as e:
        restored, reason = None, _short_reason(e)
      if multihost.any_host(restored is None):
        reason = reason or "unreadable on another host"
        logging.warning("checkpoint %s is damaged and skipped (%s); trying the "
                        "previous step", self._step_dir(step), reason)
        damaged.append((step, reason))
        continue
      self._move_aside([s for s, _ in damaged])
      return (step, *restored)
    if damaged:
      raise DamagedCheckpointError(
          f"no checkpoint in {self.directory} reads back:\n" + "\n".join(
              f"  {self._step_dir(s)}: {r}" for s, r in damaged))
    return None

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _move_aside(self, steps: list[int]) -> None:
    """Renames damaged step folders to `<dir>/damaged/<step>` (leader only)."""
    if not steps:
      return
    if multihost.is_leader():
      for step in steps:
        target = run_dir.damaged_checkpoint_dir(self.directory, step)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(self._step_dir(step), target)
        logging.warning("checkpoint %s moved to %s", self._step_dir(step),
                        target)
    multihost.barrier("checkpoints:move_damaged")
    self._mgr.reload()

  def _state_metadata(self, step: int) -> Any:
    meta = self._mgr.item_metadata(step)
    tree = meta[STATE] if meta is not None else None
    return getattr(tree, "tree", tree)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def _short_reason(error: BaseException) -> str:
  """The first line of `error`, without tensorstore's long spec."""
  text = str(error).split(" [tensorstore_spec=")[0].strip().splitlines()
  text = text[0] if text else ""
  return f"{type(error).__name__}: {text[:300]}"


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in flat:
    shape = getattr(leaf, "shape", None)
    out[jax.tree_util.keystr(path)] = None if shape is None else tuple(shape)
  return out


def _shape_problems(have: Mapping[str, Any], want: Mapping[str, Any], *,
                    missing_ok: bool = False) -> list[str]:
  """One line per path that differs: missing, extra, or of another shape."""
  problems = [] if missing_ok else [
      f"  missing in checkpoint: {k} (model wants {want[k]})"
      for k in sorted(set(want) - set(have))]
  problems += [f"  not in model: {k} (checkpoint has {have[k]})"
               for k in sorted(set(have) - set(want))]
  problems += [f"  shape mismatch: {k}: checkpoint {have[k]} vs model {want[k]}"
               for k in sorted(set(have) & set(want))
               if have[k] is not None and want[k] is not None
               and have[k] != want[k]]
  return problems


def _raise_problems(problems: list[str], where: str) -> None:
  if problems:
    shown = problems[:30] + ([f"  ... and {len(problems) - 30} more"]
                             if len(problems) > 30 else [])
    raise CheckpointError(f"checkpoint {where} does not fit the model:\n"
                          + "\n".join(shown))


def _check_shapes(saved: Any, target: Any, where: str) -> None:
  """Raises naming every differing path and shape (missing, extra, mismatched)."""
  if saved is not None:
    _raise_problems(_shape_problems(_flat_shapes(saved), _flat_shapes(target)),
                    where)


def _resolve_checkpoint(path: str, collection: str
                        ) -> tuple[str, Optional[tuple[str, ...]]]:
  """`run_dir.resolve_checkpoint`, with a missing path as a `CheckpointError`."""
  try:
    return run_dir.resolve_checkpoint(path, collection)
  except FileNotFoundError as e:
    raise CheckpointError(str(e)) from None


def has_collection(path: str, collection: str) -> bool:
  """Whether a fine-tuning source holds `collection` (e.g. "batch_stats")."""
  try:
    directory, key = _resolve_checkpoint(path, collection)
    ckptr = ocp.PyTreeCheckpointer()
    try:
      tree = ckptr.metadata(directory)
    finally:
      ckptr.close()
  except (CheckpointError, FileNotFoundError, ValueError):
    return False
  tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
  for k in key or ():
    if not isinstance(tree, Mapping) or k not in tree:
      return False
    tree = tree[k]
  return True


def load_params(path: str, abstract_params: Any, *,
                collection: str = "params", scratch: Any = None) -> Any:
  """Parameters (or another collection) for fine-tuning from `path`, sharded.

  `abstract_params` gives the wanted structure, shapes, dtypes and shardings. Any
  missing, extra or differently shaped entry raises `CheckpointError` naming
  the path and the shapes, before anything is loaded.

  With `scratch` (initialized values of the same structure: t5x's
  `fallback_to_scratch`), the checkpoint may hold a part of the model only, e.g.
  a pretrained image backbone: its entries are loaded, every model entry it
  lacks keeps its `scratch` value and is logged by name. Extra entries and shape
  mismatches still raise.
  """
  directory, key = _resolve_checkpoint(path, collection)
  target = jax.tree.map(_abstract_leaf, abstract_params)
  target_dict = flax.serialization.to_state_dict(target)
  ckptr = ocp.PyTreeCheckpointer()
  try:
    try:
      meta = ckptr.metadata(directory)
    except (FileNotFoundError, ValueError) as e:
      raise CheckpointError(f"no orbax checkpoint at {directory}: {e}") from e
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    for k in key or ():
      if not isinstance(tree, Mapping) or k not in tree:
        raise CheckpointError(
            f"checkpoint {directory} has no {'/'.join(key)!r} entry (it has "
            f"{sorted(tree) if isinstance(tree, Mapping) else type(tree)})")
      tree = tree[k]
    if scratch is None:
      _check_shapes(tree, target_dict, directory)
      wanted = target_dict
    else:
      wanted, left = _present_part(tree, target_dict, directory)
      logging.info("initial checkpoint %s: %d %s entries loaded, %d left at "
                   "their initialization: %s", directory,
                   len(_flat_shapes(wanted)), collection, len(left),
                   ", ".join(left[:20]) + (" ..." if len(left) > 20 else ""))
    for k in reversed(key or ()):
      wanted = {k: wanted}
    # Only this collection is read (e.g. the optimizer moments of a training
    # checkpoint stay on disk).
    restored = ckptr.restore(directory, args=ocp.args.PyTreeRestore(
        item=wanted,
        restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore=True))
  finally:
    ckptr.close()
  for k in key or ():
    restored = restored[k]
  if scratch is not None:
    restored = _overlay(flax.serialization.to_state_dict(scratch), restored)
  return flax.serialization.from_state_dict(target, restored)


def _present_part(saved: Any, target: Mapping[str, Any], where: str
                  ) -> tuple[dict[str, Any], list[str]]:
  """(the sub-tree of `target` that `saved` holds, the paths it lacks).

  Raises like `_check_shapes` on entries of `saved` the model lacks or has with
  another shape; a checkpoint that shares no entry with the model is an error.
  """
  have, want = _flat_shapes(saved), _flat_shapes(target)
  problems = _shape_problems(have, want, missing_ok=True)
  if not set(have) & set(want):
    problems.append("  no entry of the checkpoint is in the model")
  _raise_problems(problems, where)

  def prune(saved_node: Any, target_node: Any) -> Any:
    if not isinstance(target_node, Mapping):
      return target_node
    out = {k: prune(saved_node[k], v) for k, v in target_node.items()
           if isinstance(saved_node, Mapping) and k in saved_node}
    return {k: v for k, v in out.items() if not (isinstance(v, Mapping) and not v)}

  return prune(saved, target), sorted(set(want) - set(have))


def _overlay(base: Any, top: Any) -> Any:
  """`base` with every leaf that `top` holds replaced by top's."""
  if not isinstance(base, Mapping):
    return top
  return {k: _overlay(v, top[k]) if isinstance(top, Mapping) and k in top else v
          for k, v in base.items()}


# ---- whole variable sets (evaluation, inference, the API) -------------------------
def abstract_variables(model: Any, example_batch: Mapping[str, np.ndarray],
                       partitioner: Any = None) -> dict[str, Any]:
  """Shapes, dtypes and shardings of every variable collection (for restoring)."""
  shapes = {k: np.asarray(v).shape for k, v in example_batch.items()}
  types = {k: np.asarray(v).dtype for k, v in example_batch.items()}
  boxed = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, shapes, types),
      jax.random.key(0))
  out = {}
  for name, tree in boxed.items():
    if partitioner is not None:
      shardings = partitioner.logical_to_mesh_shardings(tree)
    else:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, nn.meta.unbox(tree))
    out[name] = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(tree), shardings)
  return out


def load_variables(path: str, model: Any,
                   example_batch: Mapping[str, np.ndarray],
                   partitioner: Any = None) -> dict[str, Any]:
  """`{"params"[, "batch_stats"]}` of a checkpoint (MODEL_DIR, step, converted).

  BatchNorm statistics are loaded when the checkpoint has them; otherwise the
  model's initial ones are used later (`evaluation.runner.complete_variables`).
  """
  if not run_dir.looks_like_checkpoint(path):
    raise CheckpointError(
        f"{path} holds no checkpoint: expected a training MODEL_DIR (step "
        "folders), one step folder, or a converted checkpoint")
  abstract = abstract_variables(model, example_batch, partitioner)
  variables = {"params": load_params(path, abstract["params"])}
  for name in abstract:
    if name != "params" and has_collection(path, name):
      variables[name] = load_params(path, abstract[name], collection=name)
  return variables
