"""The training loop: a linear sequence of small named steps, big_vision style,
with t5x conventions.

`train` reads top to bottom: set-up, input, model and optimizer, shard and
compile, restore (own checkpoint -> initial checkpoint -> scratch), loop, final
save; each step is a function below. Everything a run needs is an argument (gin
binds them in `gin/runs/train.gin`); nothing is global. What the run directory
holds is `ofa_jax.run_dir`'s; the metrics are `ofa_jax.train_metrics`'.

Guarantees:
* exact resume: the state, the step and the input position are checkpointed
  together; a restarted run continues with exactly the batches and dropout masks
  the uninterrupted run would have used;
* a non-finite loss stops the run naming the step, *before* any later save, so
  the last checkpoint on disk is the last good one;
* SIGTERM / SIGINT finish the current step, save, and return cleanly; with
  several processes, a signal to any one stops all of them at the same step
  (agreed before every step), so all save it and none waits in a collective;
* a step folder that no longer reads back (truncated, half deleted) is skipped
  with a warning naming it, and the run resumes from the previous good step
  (`CheckpointManager.restore_latest`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import seqio

from ofa_jax import checkpoints as ckpt_lib
from ofa_jax import data_iterator as data_lib
from ofa_jax import feature_converter as fc_lib
from ofa_jax import gin_utils
from ofa_jax import multihost
from ofa_jax import partitioning
from ofa_jax import run_dir
from ofa_jax import train_state as ts_lib
from ofa_jax.features import task_id_of
from ofa_jax.plan import checks as plan_checks
# The metric writers' public names, where callers have always found them.
from ofa_jax.train_metrics import (EventFileWriter, MetricsLog,  # pylint: disable=unused-import
                                   NonFiniteLossError, create_writer,
                                   per_task_scalars, read_scalars)


@dataclasses.dataclass
class TrainResult:
  state: Any
  step: int
  status: str  # "done" or "preempted"


class _StopRequest:
  """SIGTERM/SIGINT set a flag; the loop saves and returns at the next step.

  Only a flag, because a handler runs between two Python bytecodes of the main
  thread, possibly inside a collective: the loop acts on it at the next step
  boundary, where every host asks the others (`multihost.any_host`).
  """

  def __init__(self, enabled: bool):
    self.signal: Optional[int] = None
    self._old: dict[int, Any] = {}
    if enabled and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

  def describe(self) -> str:
    """Why the run stops, for the log: this host's signal, or another's."""
    if self.signal is None:
      return "signal received on another host"
    return f"{signal.Signals(self.signal).name} received"

  def restore(self):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def _tasks_of(mixture_or_task_name: str) -> list[Any]:
  """The tasks of a registered mixture or task ([] when it is not registered)."""
  try:
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
  except ValueError:
    return []
  return list(getattr(provider, "tasks", None) or [provider])


def _task_names(mixture_or_task_name: str) -> dict[int, str]:
  return {task_id_of(t.name): t.name for t in _tasks_of(mixture_or_task_name)}


def _run_options(mixture_or_task_name: str) -> dict[str, Any]:
  """The options the tasks were registered with that the trained model depends
  on (the modalities' run options, e.g. the input image side), for
  `Generalist.load`."""
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  return modalities.recorded_run_options(
      getattr(getattr(t, "plan", None), "options", {})
      for t in _tasks_of(mixture_or_task_name))


def _input_shapes(spec: Mapping[str, Any], batch_size: int):
  shapes = {k: (batch_size,) + tuple(v.shape[1:]) for k, v in spec.items()}
  types = {k: v.dtype.as_numpy_dtype for k, v in spec.items()}
  return shapes, types


def train(*, model: Any, model_dir: str, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], train_steps: int,
          batch_size: int, optimizer: optax.GradientTransformation,
          partitioner: Optional[partitioning.Partitioner] = None,
          feature_converter: Optional[seqio.FeatureConverter] = None,
          seed: int = 0, data_seed: Optional[int] = None, split: str = "train",
          shuffle: bool = True, use_cached: bool = False,
          cache_dirs: Sequence[str] = (),
          num_input_shards: Optional[int] = None, microbatches: int = 1,
          label_smoothing: Optional[float] = None,
          loss_kwargs: Optional[Mapping[str, Any]] = None,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          async_checkpoints: bool = True, log_period: int = 10,
          initial_checkpoint_path: Optional[str] = None,
          initial_checkpoint_fallback_to_scratch: bool = False,
          register_fns: Sequence[Callable[[], Any]] = (),
          eval_period: int = 0,
          eval_kwargs: Optional[Mapping[str, Any]] = None,
          handle_signals: bool = True,
          reset_data_position: bool = False,
          prng_impl: str = ts_lib.DEFAULT_DROPOUT_PRNG) -> TrainResult:
  """Trains `model` on a SeqIO mixture until `train_steps`; resumes from `model_dir`.

  `initial_checkpoint_path` starts a new run from another checkpoint (fine-tuning);
  with `initial_checkpoint_fallback_to_scratch` it may hold part of the model
  only (e.g. a pretrained image backbone), the rest starting from scratch.

  `use_cached` reads tasks that have an offline cache (seqio's convention) from
  `cache_dirs` (e.g. image targets already tokenized by tools/tokenize_images.py);
  the others are processed on the fly.

  `register_fns` are called first (e.g. `tasks.demo.register_demo_tasks`), so a
  gin file can register the tasks it trains on without import-time side effects.
  Returns when done or stopped by a signal (after saving); raises
  `NonFiniteLossError` on a NaN or infinite loss. With `eval_period > 0`, every
  task of the mixture is decoded and scored (`ofa_jax.evaluation.Evaluator`,
  built with `eval_kwargs`) every `eval_period` steps and at the end; the metrics
  go to the writer under `eval/<task>/<metric>` and the predictions to
  `MODEL_DIR/eval/<step>/`.

  `prng_impl` is the PRNG of the dropout masks (`jax.random.key`'s impl):
  by default "unsafe_rbg", XLA's RngBitGenerator, the fastest to draw
  (`train_state.DEFAULT_DROPOUT_PRNG` says why); "threefry2x32" is JAX's
  default. Initialization always uses threefry, so the choice changes the
  dropout masks only.

  A resume continues the input where the checkpoint left it (from the saved
  tf.data iterator states: `data_iterator` says how and when it falls back
  to skipping); a checkpoint of another input stream is refused, naming what
  changed. `reset_data_position` starts the input afresh instead (logged).
  """
  _register_tasks(register_fns)
  if cache_dirs:  # where seqio looks for offline caches (tools/tokenize_images.py)
    seqio.add_global_cache_dirs(list(cache_dirs))
  plan_checks.check_mixture_for_model(mixture_or_task_name,
                                      getattr(model, "config", None))
  if train_steps <= 0 or batch_size <= 0:
    raise ValueError(f"train_steps ({train_steps}) and batch_size ({batch_size}) "
                     "must be positive")
  dropout_rng = ts_lib.dropout_key(seed, prng_impl)  # an unknown impl: now
  model_dir = os.path.abspath(model_dir)
  leader = multihost.is_leader()
  if leader:
    _start_run_dir(model_dir)
  partitioner = partitioner or partitioning.make_partitioner()
  writer = create_writer(run_dir.train_logdir(model_dir), just_logging=not leader)

  if feature_converter is None:
    feature_converter = fc_lib.for_model(model, "train")
  data = _input(mixture_or_task_name, task_feature_lengths, batch_size, split,
                shuffle, seed if data_seed is None else data_seed, use_cached,
                num_input_shards, feature_converter, reset_data_position)

  init_fn, shardings, abstract = _state_layout(model, optimizer, data,
                                               partitioner)
  if leader:
    _write_model_info(model_dir, partitioner, abstract)
  evaluator = _evaluator(model, mixture_or_task_name, task_feature_lengths,
                         partitioner, feature_converter, eval_period,
                         eval_kwargs)
  if leader and hasattr(model, "config"):
    _save_model_config(model_dir, model, mixture_or_task_name)

  train_step = _compile_train_step(model, optimizer, partitioner, shardings,
                                   microbatches, label_smoothing, loss_kwargs)
  rng = jax.random.key(seed)

  ckpts = ckpt_lib.CheckpointManager(model_dir, save_period=checkpoint_period,
                                     keep=keep_checkpoints,
                                     async_save=async_checkpoints)
  state, latest = _restore_or_initialize(
      ckpts, data, init_fn, shardings, rng, partitioner, model_dir,
      initial_checkpoint_path, initial_checkpoint_fallback_to_scratch)
  if latest is None:
    state = _load_frozen_heads(state, model, shardings, initial_checkpoint_path)

  loop = _Loop(
      state=state, step=int(jax.device_get(state.step)), last_good=latest,
      train_steps=train_steps, data=data, train_step=train_step,
      partitioner=partitioner, dropout_rng=dropout_rng, ckpts=ckpts,
      meta={"mixture_or_task_name": mixture_or_task_name, "seed": seed,
            "batch_size": batch_size, "train_steps": train_steps},
      checkpoint_period=checkpoint_period, log_period=log_period,
      evaluator=evaluator,
      eval_period=eval_period if evaluator is not None else 0,
      model_dir=model_dir, writer=writer)
  status = loop.run(_StopRequest(handle_signals))
  if leader:
    gin_utils.write_operative_config(model_dir)
  return TrainResult(state=loop.state, step=loop.step, status=status)


# ---- set-up --------------------------------------------------------------------
def _register_tasks(register_fns: Sequence[Callable[[], Any]]) -> None:
  for fn in register_fns:
    fn()


def _start_run_dir(model_dir: str) -> None:
  """Creates the run directory with the config as parsed (the operative one is
  written again at the end, when every configured function has run)."""
  os.makedirs(model_dir, exist_ok=True)
  gin_utils.write_operative_config(model_dir)


# ---- input ------------------------------------------------------------------------
def _input(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
           batch_size: int, split: str, shuffle: bool, seed: int,
           use_cached: bool, num_input_shards: Optional[int],
           feature_converter: seqio.FeatureConverter,
           reset_position: bool) -> data_lib.DataIterator:
  config = data_lib.DataConfig(
      mixture_or_task_name=mixture_or_task_name,
      task_feature_lengths=dict(task_feature_lengths), batch_size=batch_size,
      split=split, shuffle=shuffle, seed=seed, use_cached=use_cached,
      num_shards=num_input_shards)
  return data_lib.DataIterator(config, feature_converter,
                               reset_position=reset_position)


# ---- model and optimizer ---------------------------------------------------------
def _state_layout(model: Any, optimizer: optax.GradientTransformation,
                  data: data_lib.DataIterator,
                  partitioner: partitioning.Partitioner
                  ) -> tuple[Callable[[jax.Array], Any], Any, Any]:
  """(init_fn, state shardings, abstract boxed state) of the train state.

  Initializes with one example per data shard: parameter shapes do not depend
  on the batch size, and this keeps the init cheap and evenly shardable.
  """
  shapes, types = _input_shapes(data.element_spec, partitioner.num_data_shards)
  abstract, init_fn = ts_lib.abstract_and_init(
      lambda rng: model.get_initial_variables(rng, shapes, types), optimizer)
  return init_fn, partitioner.logical_to_mesh_shardings(abstract), abstract


def _write_model_info(model_dir: str, partitioner: partitioning.Partitioner,
                      abstract: Any) -> None:
  """The parameter layout, as text for people and as JSON for programs."""
  sizes = [x.size for x in jax.tree.leaves(nn.meta.unbox(abstract.params))]
  text = (f"mesh: {dict(partitioner.mesh.shape)}\nrules: {partitioner.rules}\n"
          + "\n".join(partitioning.describe(abstract.params, partitioner))
          + f"\ntotal parameters: {sum(sizes):,} in {len(sizes)} arrays\n")
  run_dir.write_model_info(model_dir, text, {
      "mesh": {str(k): int(v) for k, v in dict(partitioner.mesh.shape).items()},
      "total_parameters": int(sum(sizes)), "num_arrays": len(sizes)})


def _evaluator(model: Any, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int],
               partitioner: partitioning.Partitioner,
               feature_converter: seqio.FeatureConverter, eval_period: int,
               eval_kwargs: Optional[Mapping[str, Any]]) -> Any:
  """The in-training `Evaluator` (None: no evaluation this run).

  Every process builds it: with several processes each decodes its rows of
  every eval batch on the training mesh, and process 0 writes the metrics
  and predictions (`evaluation/hosts.py`).
  """
  if eval_period <= 0:
    return None
  from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
  return evaluation.Evaluator(
      model, mixture_or_task_name, dict(task_feature_lengths),
      partitioner=partitioner, feature_converter=feature_converter,
      **dict(eval_kwargs or {}))


def _save_model_config(model_dir: str, model: Any,
                       mixture_or_task_name: str) -> None:
  """`model_config.json`, so that `Generalist.load(model_dir)` needs no arguments."""
  from ofa_jax.api import model_spec  # pylint: disable=g-import-not-at-top
  model_spec.save(model_dir, model.config,
                  vocabulary=getattr(model, "vocabulary", None),
                  task_options=_run_options(mixture_or_task_name))


# ---- shard and compile -------------------------------------------------------------
def _compile_train_step(model: Any, optimizer: optax.GradientTransformation,
                        partitioner: partitioning.Partitioner, shardings: Any,
                        microbatches: int, label_smoothing: Optional[float],
                        loss_kwargs: Optional[Mapping[str, Any]]
                        ) -> Callable[..., Any]:
  kwargs = dict(loss_kwargs or {})
  if label_smoothing is not None:
    kwargs["label_smoothing"] = label_smoothing
  step_fn = ts_lib.make_train_step(model, optimizer, microbatches=microbatches,
                                   loss_kwargs=kwargs)
  return partitioner.jit(
      step_fn, in_shardings=(shardings, partitioner.data_sharding,
                             partitioner.replicated),
      out_shardings=(shardings, partitioner.replicated, partitioner.replicated),
      donate_argnums=(0,))


# ---- restore: own checkpoint -> initial checkpoint -> scratch ------------------------
def _restore_or_initialize(ckpts: ckpt_lib.CheckpointManager,
                           data: data_lib.DataIterator,
                           init_fn: Callable[[jax.Array], Any], shardings: Any,
                           rng: jax.Array, partitioner: partitioning.Partitioner,
                           model_dir: str, initial_checkpoint_path: Optional[str],
                           fallback_to_scratch: bool) -> tuple[Any, Optional[int]]:
  """(state, the step resumed from or None) at the start of the loop."""
  found, t0 = None, time.time()
  if ckpts.latest_step() is not None:
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.eval_shape(init_fn, rng), shardings)
    # The newest step that reads back (damaged ones are skipped with a warning).
    found = ckpts.restore_latest(abstract_state)
  if found is not None:
    latest, state, position, _ = found
    data.restore(position)
    logging.info("resumed from %s step %d (input position restored in %.1fs)",
                 model_dir, latest, time.time() - t0)
    return state, latest
  state = partitioner.jit(init_fn, in_shardings=None,
                          out_shardings=shardings)(jax.random.fold_in(rng, 1))
  if initial_checkpoint_path:
    state = _load_initial_checkpoint(state, initial_checkpoint_path,
                                     fallback_to_scratch)
  return state, None


def _load_initial_checkpoint(state: Any, path: str, partial: bool) -> Any:
  """`state` with the parameters (and e.g. BatchNorm statistics) of `path`."""
  params = ckpt_lib.load_params(path, state.params,
                                scratch=state.params if partial else None)
  model_state = dict(state.model_state)
  for name in model_state:  # e.g. BatchNorm statistics, when present
    if ckpt_lib.has_collection(path, name):
      model_state[name] = ckpt_lib.load_params(
          path, model_state[name], collection=name,
          scratch=model_state[name] if partial else None)
  logging.info("initialized parameters from %s", path)
  return state.replace(params=params, model_state=model_state)


def _load_frozen_heads(state: Any, model: Any, shardings: Any,
                       initial_checkpoint_path: Optional[str]) -> Any:
  """`state` with the trained weights of the model's frozen target heads (the
  VQGAN of image targets), read from their directories. An initial checkpoint
  that holds them (a generalist fine-tuned further) is enough on its own."""
  heads = getattr(model, "target_heads", None)
  if not heads:
    return state
  no_dirs = all(not h.checkpoint_dir for h in heads.values())
  if (no_dirs and initial_checkpoint_path
      and ckpt_lib.has_collection(initial_checkpoint_path, "target_heads")):
    return state
  model_state = dict(state.model_state)
  for collection, tree in model.frozen_variables().items():
    want = jax.tree_util.tree_flatten_with_path(model_state[collection])[0]
    got = dict(jax.tree_util.tree_flatten_with_path(tree)[0])
    for path, leaf in want:
      if path not in got or tuple(got[path].shape) != tuple(leaf.shape):
        name = jax.tree_util.keystr(path)
        raise ValueError(
            f"frozen head weights: {collection}{name} is "
            f"{'missing' if path not in got else tuple(got[path].shape)} but "
            f"the model needs {tuple(leaf.shape)}")
    model_state[collection] = jax.device_put(
        jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), tree,
                     model_state[collection]),
        shardings.model_state[collection])
    logging.info("frozen %s loaded: %s", collection, ", ".join(
        f"{n} from {h.checkpoint_dir}" for n, h in sorted(heads.items())))
  return state.replace(model_state=model_state)


# ---- loop ----------------------------------------------------------------------------
@dataclasses.dataclass
class _Loop:
  """The training loop's state and its three actions: step, save, evaluate."""

  state: Any
  step: int
  last_good: Optional[int]
  train_steps: int
  data: data_lib.DataIterator
  train_step: Callable[..., Any]
  partitioner: partitioning.Partitioner
  dropout_rng: jax.Array
  ckpts: ckpt_lib.CheckpointManager
  meta: Mapping[str, Any]
  checkpoint_period: int
  log_period: int
  evaluator: Any
  eval_period: int
  model_dir: str
  writer: Any

  def run(self, stop: _StopRequest) -> str:
    """Trains to `train_steps`; returns "done" or "preempted" (after saving)."""
    log = MetricsLog(self.writer, task_names=_task_names(
        self.meta["mixture_or_task_name"]), train_steps=self.train_steps,
                     model_dir=self.model_dir, leader=multihost.is_leader(),
                     step=self.step)
    first_step, status = self.step, "done"
    try:
      while self.step < self.train_steps:
        # A collective every step: each host calls it at the same step, so a
        # signal to any host stops all of them before the same step (a host
        # that went on alone would wait forever in the next train step). Cost:
        # 6.5 ms per call with 2 processes x 2 CPU devices on loopback (a
        # loaded 2-core host), lost in the noise of the toy's 90-180 ms step.
        if multihost.any_host(stop.signal is not None):
          logging.warning("%s: saving step %d and stopping", stop.describe(),
                          self.step)
          status = "preempted"
          break
        metrics, per_example = self._train_one_step()
        if self.step == first_step + 1:
          log.compiled(self.step, metrics)
        log.add(self.step, metrics, per_example)
        if self.step % self.log_period == 0 or self.step == self.train_steps:
          log.flush(self.last_good)
        self._save(log, force=False)
        if (self.eval_period > 0 and self.step % self.eval_period == 0
            and self.step < self.train_steps):
          self._evaluate(log)
      self._save(log, force=True)
      if self.eval_period > 0 and status == "done":
        self._evaluate(log)
      self.ckpts.wait()
    except NonFiniteLossError:
      self.ckpts.wait()
      raise
    finally:
      stop.restore()
      self.ckpts.close()
      self.writer.flush()
    return status

  def _train_one_step(self) -> tuple[Any, Any]:
    batch = next(self.data)
    self.state, metrics, per_example = self.train_step(
        self.state, self.partitioner.shard_batch(batch), self.dropout_rng)
    self.step += 1
    return metrics, per_example

  def _save(self, log: MetricsLog, force: bool) -> None:
    if force or self.step % self.checkpoint_period == 0:
      log.flush(self.last_good)  # never save a state after a non-finite loss
      if self.ckpts.save(self.step, self.state, self.data.position(), self.meta,
                         force=force,
                         data_iterator_states=self.data.iterator_states()):
        self.last_good = self.step

  def _evaluate(self, log: MetricsLog) -> None:
    """Decodes every task with the current state; with several processes all
    of them call it (a collective), every one gets the metrics, and process 0
    writes the files (its writer is the one that records the scalars)."""
    from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
    log.flush(self.last_good)
    t0 = time.time()
    results = self.evaluator.evaluate(
        {"params": self.state.params, **self.state.model_state}, step=self.step,
        output_dir=run_dir.eval_dir(self.model_dir, self.step))
    scalars = {f"eval/{k}": v
               for k, v in evaluation.flatten_metrics(results).items()}
    self.writer.write_scalars(self.step, scalars)
    logging.info("evaluation at step %d took %.1fs", self.step, time.time() - t0)
