"""The training loop: one linear function, big_vision style, with t5x conventions.

Sections: set-up, input, model and optimizer, shard and compile, restore (own
checkpoint -> initial checkpoint -> scratch), loop, final save. Everything a run
needs is an argument (gin binds them in `gin/runs/train.gin`); nothing is global.

Guarantees:
* exact resume: the state, the step and the input position are checkpointed
  together; a restarted run continues with exactly the batches and dropout masks
  the uninterrupted run would have used;
* a non-finite loss stops the run naming the step, *before* any later save, so
  the last checkpoint on disk is the last good one;
* SIGTERM / SIGINT finish the current step, save, and return cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
import seqio

from ofa_jax import checkpoints as ckpt_lib
from ofa_jax import data_iterator as data_lib
from ofa_jax import feature_converter as fc_lib
from ofa_jax import gin_utils
from ofa_jax import multihost
from ofa_jax import partitioning
from ofa_jax import train_state as ts_lib
from ofa_jax.features import task_id_of


# ---- metric writing -------------------------------------------------------------
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


@dataclasses.dataclass
class TrainResult:
  state: Any
  step: int
  status: str  # "done" or "preempted"


class _StopRequest:
  """SIGTERM/SIGINT set a flag; the loop saves and returns at the next step."""

  def __init__(self, enabled: bool):
    self.signal: Optional[int] = None
    self._old: dict[int, Any] = {}
    if enabled and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

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


def _image_options(mixture_or_task_name: str) -> dict[str, Any]:
  """The image size the tasks were registered with (for `Generalist.load`)."""
  sizes = {t.plan.options["image_size"] for t in _tasks_of(mixture_or_task_name)
           if "image_size" in getattr(getattr(t, "plan", None), "options", {})}
  return {"image_size": sizes.pop()} if len(sizes) == 1 else {}


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
          prng_impl: Optional[str] = None) -> TrainResult:
  """Trains `model` on a SeqIO mixture until `train_steps`; resumes from `model_dir`.

  `initial_checkpoint_path` starts a new run from another checkpoint (fine-tuning);
  with `initial_checkpoint_fallback_to_scratch` it may hold part of the model
  only (e.g. a pretrained image backbone), the rest starting from scratch.

  `register_fns` are called first (e.g. `tasks.demo.register_demo_tasks`), so a
  gin file can register the tasks it trains on without import-time side effects.
  Returns when done or stopped by a signal (after saving); raises
  `NonFiniteLossError` on a NaN or infinite loss. With `eval_period > 0`, every
  task of the mixture is decoded and scored (`ofa_jax.evaluation.Evaluator`,
  built with `eval_kwargs`) every `eval_period` steps and at the end; the metrics
  go to the writer under `eval/<task>/<metric>` and the predictions to
  `MODEL_DIR/eval/<step>/`.

  `prng_impl` is the PRNG of the dropout masks (`jax.random.key`'s impl; None:
  JAX's default threefry). "rbg" / "unsafe_rbg" (XLA's RngBitGenerator, as
  MaxText trains) are cheaper to draw; initialization always uses threefry, so
  the choice changes the dropout masks only.
  """
  # ---- set-up ---------------------------------------------------------------
  for fn in register_fns:
    fn()
  if train_steps <= 0 or batch_size <= 0:
    raise ValueError(f"train_steps ({train_steps}) and batch_size ({batch_size}) "
                     "must be positive")
  model_dir = os.path.abspath(model_dir)
  leader = multihost.is_leader()
  if leader:
    os.makedirs(model_dir, exist_ok=True)
    gin_utils.write_operative_config(model_dir)
  partitioner = partitioner or partitioning.make_partitioner()
  writer = create_writer(os.path.join(model_dir, "train"), just_logging=not leader)

  # ---- input ----------------------------------------------------------------
  if feature_converter is None:
    feature_converter = fc_lib.for_model(model, "train")
  data_config = data_lib.DataConfig(
      mixture_or_task_name=mixture_or_task_name,
      task_feature_lengths=dict(task_feature_lengths), batch_size=batch_size,
      split=split, shuffle=shuffle,
      seed=seed if data_seed is None else data_seed, use_cached=use_cached,
      num_shards=num_input_shards)
  data = data_lib.DataIterator(data_config, feature_converter)
  task_names = _task_names(mixture_or_task_name)

  # ---- model and optimizer ----------------------------------------------------
  # Initialize with one example per data shard (parameter shapes do not depend on
  # the batch size; this keeps the init cheap and evenly shardable).
  shapes, types = _input_shapes(data.element_spec, partitioner.num_data_shards)
  abstract, init_fn = ts_lib.abstract_and_init(
      lambda rng: model.get_initial_variables(rng, shapes, types), optimizer)
  shardings = partitioner.logical_to_mesh_shardings(abstract)
  if leader:
    with open(os.path.join(model_dir, "model-info.txt"), "w") as f:
      f.write(f"mesh: {dict(partitioner.mesh.shape)}\nrules: {partitioner.rules}\n")
      f.write("\n".join(partitioning.describe(abstract.params, partitioner)))
      sizes = [x.size for x in jax.tree.leaves(nn.meta.unbox(abstract.params))]
      f.write(f"\ntotal parameters: {sum(sizes):,} in {len(sizes)} arrays\n")

  evaluator = None
  if eval_period > 0 and jax.process_count() > 1:
    logging.warning("in-training evaluation runs on one host only; it is off for "
                    "this %d-process run (use ofa_jax.evaluate on the "
                    "checkpoints)", jax.process_count())
    eval_period = 0
  if eval_period > 0:
    from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
    evaluator = evaluation.Evaluator(
        model, mixture_or_task_name, dict(task_feature_lengths),
        partitioner=partitioner, feature_converter=feature_converter,
        **dict(eval_kwargs or {}))
  if leader and hasattr(model, "config"):
    from ofa_jax import api  # pylint: disable=g-import-not-at-top
    api.save_model_config(model_dir, model.config,
                          vocabulary=getattr(model, "vocabulary", None),
                          task_options=_image_options(mixture_or_task_name))

  # ---- shard and compile --------------------------------------------------------
  kwargs = dict(loss_kwargs or {})
  if label_smoothing is not None:
    kwargs["label_smoothing"] = label_smoothing
  step_fn = ts_lib.make_train_step(model, optimizer, microbatches=microbatches,
                                   loss_kwargs=kwargs)
  batch_sh = partitioner.data_sharding
  train_step = partitioner.jit(
      step_fn, in_shardings=(shardings, batch_sh, partitioner.replicated),
      out_shardings=(shardings, partitioner.replicated, partitioner.replicated),
      donate_argnums=(0,))
  rng = jax.random.key(seed)
  dropout_rng = rng if prng_impl is None else jax.random.key(seed, impl=prng_impl)

  # ---- restore: own checkpoint -> initial checkpoint -> scratch ----------------
  ckpts = ckpt_lib.CheckpointManager(model_dir, save_period=checkpoint_period,
                                     keep=keep_checkpoints,
                                     async_save=async_checkpoints)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      jax.eval_shape(init_fn, rng), shardings)
  meta = {"mixture_or_task_name": mixture_or_task_name, "seed": seed,
          "batch_size": batch_size, "train_steps": train_steps}
  latest = ckpts.latest_step()
  if latest is not None:
    t0 = time.time()
    state, position, _ = ckpts.restore(abstract_state, latest)
    data.restore(position)
    logging.info("resumed from %s step %d (input position restored in %.1fs)",
                 model_dir, latest, time.time() - t0)
  else:
    state = partitioner.jit(init_fn, in_shardings=None,
                            out_shardings=shardings)(jax.random.fold_in(rng, 1))
    if initial_checkpoint_path:
      partial = initial_checkpoint_fallback_to_scratch
      params = ckpt_lib.load_params(initial_checkpoint_path, state.params,
                                    scratch=state.params if partial else None)
      model_state = dict(state.model_state)
      for name in model_state:  # e.g. BatchNorm statistics, when present
        if ckpt_lib.has_collection(initial_checkpoint_path, name):
          model_state[name] = ckpt_lib.load_params(
              initial_checkpoint_path, model_state[name], collection=name,
              scratch=model_state[name] if partial else None)
      state = state.replace(params=params, model_state=model_state)
      logging.info("initialized parameters from %s", initial_checkpoint_path)
  step = int(jax.device_get(state.step))

  # ---- loop -----------------------------------------------------------------------
  stop = _StopRequest(handle_signals)
  pending: list[tuple[int, Any, Any]] = []
  last_good = latest
  t_last, s_last, tokens = time.time(), step, 0.0
  first_step = step
  status = "done"

  def flush() -> None:
    """Fetches pending metrics, stops on a non-finite loss, writes the rest."""
    nonlocal t_last, s_last, tokens
    if not pending:
      return
    fetched = jax.device_get([(s, m, p) for s, m, p in pending])
    pending.clear()
    for s, m, _ in fetched:
      if not np.isfinite(m["loss"]):
        raise NonFiniteLossError(
            f"non-finite loss {float(m['loss'])} at step {s}: stopping. The last "
            f"good checkpoint is step {last_good} in {model_dir}")
    s_now, (_, m_last, _) = fetched[-1][0], fetched[-1]
    scalars = {k: float(np.mean([m[k] for _, m, _ in fetched])) for k in m_last}
    per_ex = [(s, p) for s, _, p in fetched if "task_id" in p and "loss_sum" in p
              and "num_tokens" in p]
    if per_ex:
      cat = {k: np.concatenate([p[k] for _, p in per_ex]) for k in per_ex[0][1]}
      scalars.update(per_task_scalars(cat, task_names))
      # Throughput counts the steps timed since `t_last` (not the compiled one).
      tokens += sum(float(p["num_tokens"].sum()) for s, p in per_ex if s > s_last)
    dt = max(time.time() - t_last, 1e-9)
    steps_per_s = max(s_now - s_last, 0) / dt
    if steps_per_s > 0:  # not when only the compiled first step is pending
      scalars["steps_per_sec"] = steps_per_s
    if tokens:
      scalars["tokens_per_sec"] = tokens / dt
    writer.write_scalars(s_now, scalars)
    if leader:
      if steps_per_s > 0:
        left_s = int((train_steps - s_now) / steps_per_s)
        left = f"{left_s // 3600}:{left_s % 3600 // 60:02d}:{left_s % 60:02d}"
      else:
        left = "?"
      logging.info("step %d/%d loss %.4f | %.2f steps/s%s | %s left", s_now,
                   train_steps, scalars["loss"], steps_per_s,
                   f", {tokens / dt:.0f} tokens/s" if tokens else "", left)
    t_last, s_last, tokens = time.time(), s_now, 0.0

  def run_eval() -> None:
    """Decodes every task with the current state (single host: see evaluation)."""
    if evaluator is None:
      return
    flush()
    t0 = time.time()
    results = evaluator.evaluate({"params": state.params, **state.model_state},
                                 step=step,
                                 output_dir=os.path.join(model_dir, "eval", str(step)))
    from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
    scalars = {f"eval/{k}": v for k, v in evaluation.flatten_metrics(results).items()}
    writer.write_scalars(step, scalars)
    logging.info("evaluation at step %d took %.1fs", step, time.time() - t0)

  def save(force: bool) -> None:
    nonlocal last_good
    if force or step % checkpoint_period == 0:
      flush()  # never save a state after a non-finite loss
      if ckpts.save(step, state, data.position(), meta, force=force):
        last_good = step

  try:
    while step < train_steps:
      if multihost.any_host(stop.signal is not None):
        logging.warning("signal received: saving step %d and stopping", step)
        status = "preempted"
        break
      batch = next(data)
      state, metrics, per_example = train_step(
          state, partitioner.shard_batch(batch), dropout_rng)
      step += 1
      if step == first_step + 1:  # compilation: keep it out of the throughput
        jax.block_until_ready(metrics)
        logging.info("first step (compilation included) took %.1fs",
                     time.time() - t_last)
        t_last, s_last = time.time(), step
      pending.append((step, metrics, per_example))
      if step % log_period == 0 or step == train_steps:
        flush()
      save(force=False)
      if eval_period > 0 and step % eval_period == 0 and step < train_steps:
        run_eval()
    save(force=True)
    if eval_period > 0 and status == "done":
      run_eval()
    ckpts.wait()
  except NonFiniteLossError:
    ckpts.wait()
    raise
  finally:
    stop.restore()
    ckpts.close()
    writer.flush()
  if leader:
    gin_utils.write_operative_config(model_dir)
  return TrainResult(state=state, step=step, status=status)
