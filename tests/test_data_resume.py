"""Resuming the input from saved tf.data iterator states: exact, and as cheap at
a late position as at an early one; the fall-back to skipping, said in the log;
a changed pipeline refused by name; RESET_DATA_POSITION.

The pipelines are toy mixtures whose preprocessing is a `tf.py_function` that
sleeps and counts its calls, so a replay of the consumed input is both slow and
visible in the count.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest
import seqio
import tensorflow as tf

from ofa_jax import checkpoints
from ofa_jax import data_checkpoint
from ofa_jax import data_iterator

LENGTH = 4
BATCH = 8
SHUFFLE_BUFFER = 16
DECODE_SECONDS = 0.002  # per example: replaying 1,200 examples takes >= 2.4 s
FEATURE_LENGTHS = {"inputs": LENGTH, "targets": LENGTH}


class _CallCounter:
  """How many examples the expensive preprocessing step has processed."""

  def __init__(self):
    self._lock = threading.Lock()
    self.calls = 0

  def add(self) -> None:
    with self._lock:
      self.calls += 1


def _slow_decode(counter: _CallCounter):
  """A preprocessor standing in for image decoding: slow, and counted."""

  def decode(x):
    counter.add()
    time.sleep(DECODE_SECONDS)
    return x

  def preprocess(ds: tf.data.Dataset) -> tf.data.Dataset:
    def one(ex):
      inputs = tf.py_function(decode, [ex["inputs"]], tf.int32)
      inputs.set_shape([LENGTH])
      return dict(ex, inputs=inputs)
    return ds.map(one)

  return preprocess


def _generator_mixture(name: str) -> str:
  """A mixture whose source is a Python generator (position not in tf.data)."""
  vocab = seqio.PassThroughVocabulary(size=1000)
  feats = {k: seqio.Feature(vocab, add_eos=False, dtype=tf.int32)
           for k in ("inputs", "targets")}

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed

    def examples():
      for i in range(5000):
        x = np.arange(LENGTH, dtype=np.int32) + i
        yield {"inputs": x, "targets": x}

    spec = tf.TensorSpec([LENGTH], tf.int32)
    return tf.data.Dataset.from_generator(
        examples, output_signature={"inputs": spec, "targets": spec})

  task = f"{name}_task"
  seqio.TaskRegistry.remove(task)
  seqio.TaskRegistry.add(task, seqio.FunctionDataSource(dataset_fn, ["train"]),
                         preprocessors=[], output_features=feats,
                         shuffle_buffer_size=SHUFFLE_BUFFER)
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task, 1.0)])
  return name


def _mixture(name: str, preprocessor, rates=(2.0, 1.0)) -> str:
  """Two tasks over arrays (their positions are tf.data's), `preprocessor` on
  each, mixed at `rates`."""
  vocab = seqio.PassThroughVocabulary(size=1000)
  feats = {k: seqio.Feature(vocab, add_eos=False, dtype=tf.int32)
           for k in ("inputs", "targets")}
  tasks = []
  for i, rate in enumerate(rates):
    def dataset_fn(split, shuffle_files, seed=None, i=i):
      del split, shuffle_files, seed
      x = np.arange(5000 * LENGTH, dtype=np.int32).reshape(-1, LENGTH) + i
      return tf.data.Dataset.from_tensor_slices({"inputs": x, "targets": x})
    task = f"{name}_task{i}"
    seqio.TaskRegistry.remove(task)
    seqio.TaskRegistry.add(task, seqio.FunctionDataSource(dataset_fn, ["train"]),
                           preprocessors=[preprocessor], output_features=feats,
                           shuffle_buffer_size=SHUFFLE_BUFFER)
    tasks.append((task, rate))
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks)
  return name


def _iterator(mixture: str, *, lengths=None, num_shards=None, **kw
              ) -> data_iterator.DataIterator:
  config = data_iterator.DataConfig(mixture, lengths or FEATURE_LENGTHS,
                                    batch_size=BATCH, seed=3,
                                    num_shards=num_shards)
  return data_iterator.DataIterator(
      config, seqio.PassThroughFeatureConverter(), **kw)


def _save(it: data_iterator.DataIterator, directory) -> dict:
  """What a checkpoint holds for the input, as `CheckpointManager.restore`
  hands it back (the position naming the directory of iterator states)."""
  os.makedirs(directory, exist_ok=True)
  data_checkpoint.IteratorStatesHandler().save(
      directory, data_checkpoint.IteratorStatesSave(it.iterator_states()))
  return dict(it.position(), **{data_checkpoint.ITERATOR_STATE_DIR:
                                str(directory)})


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _restore_cost(mixture, counter, position) -> tuple[int, float, dict]:
  """(decodes, seconds, the batch) to restore `position` and produce the
  next batch."""
  it = _iterator(mixture)
  calls, t0 = counter.calls, time.perf_counter()
  it.restore(position)
  batch = next(it)
  return counter.calls - calls, time.perf_counter() - t0, batch


def test_restore_at_a_late_position_costs_no_more_than_at_an_early_one(
    tmp_path):
  """A `tf.py_function` decoder (as the tokenizers) keeps iterator states on."""
  counter = _CallCounter()
  mix = _mixture("resume_slow_mix", _slow_decode(counter))
  early, late = 2, 150
  run = _iterator(mix)
  for _ in range(early):
    next(run)
  at_early = _save(run, tmp_path / "early")
  after_early = next(run)
  for _ in range(late - early - 1):
    next(run)
  at_late = _save(run, tmp_path / "late")
  after_late = next(run)

  early_calls, early_s, batch = _restore_cost(mix, counter, at_early)
  _assert_same(batch, after_early)
  late_calls, late_s, batch = _restore_cost(mix, counter, at_late)
  _assert_same(batch, after_late)
  # What a replay costs, measured the same way: the batch count alone.
  skip = {k: v for k, v in at_late.items()
          if k != data_checkpoint.ITERATOR_STATE_DIR}
  skip_calls, skip_s, batch = _restore_cost(mix, counter, skip)
  _assert_same(batch, after_late)
  logging.info("restore + first batch: early %d decodes %.2fs, late %d "
               "decodes %.2fs, replaying the late position %d decodes %.2fs",
               early_calls, early_s, late_calls, late_s, skip_calls, skip_s)
  assert skip_calls >= late * BATCH
  # The pipeline refills at most its buffers (prefetch, parallel maps), the
  # same at either position: far below the replay.
  assert late_calls <= early_calls + 4 * SHUFFLE_BUFFER
  assert late_calls < skip_calls / 4
  assert late_s < skip_s / 2


def test_checkpoint_manager_keeps_one_state_file_per_shard(tmp_path):
  """Two shards on one host; each shard's state is its own file, the resumed
  batches are those of the uninterrupted run."""
  mix = _mixture("resume_shards_mix", lambda ds: ds)
  run = _iterator(mix, num_shards=2)
  for _ in range(5):
    next(run)
  mgr = checkpoints.CheckpointManager(str(tmp_path), async_save=False)
  state = {"w": np.arange(3, dtype=np.float32)}
  assert mgr.save(5, state, run.position(), {}, force=True,
                  data_iterator_states=run.iterator_states())
  mgr.wait()
  want = [next(run) for _ in range(3)]
  _, position, _ = mgr.restore(state)
  mgr.close()
  states_dir = position[data_checkpoint.ITERATOR_STATE_DIR]
  assert sorted(f for f in os.listdir(states_dir) if f.endswith(".tfdata")) == [
      "shard_0.tfdata", "shard_1.tfdata"]
  resumed = _iterator(mix, num_shards=2)
  resumed.restore(position)
  for a in want:
    _assert_same(next(resumed), a)
  assert resumed.position()["batches_consumed"] == 8


def test_pipeline_it_cannot_checkpoint_resumes_by_skipping_and_says_so(
    tmp_path, caplog):
  mix = _generator_mixture("resume_generator_mix")
  with caplog.at_level(logging.WARNING):
    run = _iterator(mix)
  assert "GeneratorDataset (Dataset.from_generator" in caplog.text
  assert "skips the consumed batches" in caplog.text
  assert run.iterator_states() is None
  for _ in range(3):
    next(run)
  position = run.position()
  assert position["iterator_state"] == (
      "not saved: GeneratorDataset (Dataset.from_generator: its position is "
      "in Python)")
  want = next(run)
  caplog.clear()
  resumed = _iterator(mix)
  with caplog.at_level(logging.WARNING):
    resumed.restore(position)
  assert "resuming by skipping 3 consumed batches" in caplog.text
  assert "GeneratorDataset" in caplog.text
  _assert_same(next(resumed), want)


def test_changed_pipeline_is_refused_naming_what_changed(tmp_path):
  mix = _mixture("resume_changed_mix", lambda ds: ds)
  run = _iterator(mix)
  next(run)
  position = _save(run, tmp_path / "s")
  with pytest.raises(ValueError, match=r"task_feature_lengths: checkpoint "
                     r"\{'inputs': 4, 'targets': 4\} vs now \{'inputs': 6"):
    _iterator(mix, lengths={"inputs": 6, "targets": 4}).restore(position)
  _mixture("resume_changed_mix", lambda ds: ds, rates=(1.0, 1.0))
  with pytest.raises(ValueError, match=r"mixture_tasks: checkpoint .*"
                     r"'resume_changed_mix_task0': 2\.0.* vs now .*"
                     r"'resume_changed_mix_task0': 1\.0.*RESET_DATA_POSITION"):
    _iterator(mix).restore(position)


def test_state_of_another_pipeline_is_refused_naming_the_file(tmp_path):
  mix = _mixture("resume_other_mix", lambda ds: ds)
  run = _iterator(mix)
  position = _save(run, tmp_path / "s")
  path = data_checkpoint.state_file(str(tmp_path / "s"), 0)
  with open(path, "wb") as f:
    f.write(b"not an iterator state")
  with pytest.raises(ValueError, match=r"iterator state in .*shard_0.tfdata "
                     r"does not fit this input pipeline"):
    _iterator(mix).restore(position)


def test_reset_data_position_starts_afresh_and_logs_it(tmp_path, caplog):
  mix = _mixture("resume_reset_mix", lambda ds: ds)
  run = _iterator(mix)
  first = next(run)
  next(run)
  position = _save(run, tmp_path / "s")
  changed = dict(position, task_feature_lengths={"inputs": 9, "targets": 9})
  fresh = _iterator(mix, reset_position=True)
  with caplog.at_level(logging.WARNING):
    fresh.restore(changed)
  assert "RESET_DATA_POSITION" in caplog.text and "batch 2" in caplog.text
  _assert_same(next(fresh), first)
  assert fresh.position()["batches_consumed"] == 1


def test_ops_with_hidden_state_are_named_pure_maps_are_not():
  base = tf.data.Dataset.range(10)
  pure = base.map(lambda x: tf.py_function(lambda v: v + 1, [x], tf.int64))
  pure = pure.map(lambda x: tf.numpy_function(lambda v: v, [x], tf.int64))
  assert data_checkpoint.unsupported_ops(pure.shuffle(4, seed=1)) == []
  drawn = base.map(lambda x: tf.random.uniform([], seed=1))
  assert data_checkpoint.unsupported_ops(drawn) == [
      "RandomUniform (a stateful random op: its generator state is not saved)"]
  generated = tf.data.Dataset.from_generator(
      lambda: iter(range(3)), output_signature=tf.TensorSpec([], tf.int64))
  assert [op.split()[0] for op in data_checkpoint.unsupported_ops(
      generated.concatenate(pure))] == ["GeneratorDataset"]


def test_states_saved_by_two_hosts_resume_on_one(tmp_path):
  """Per-shard states: a run saved by 2 processes resumes on 1 (same global
  batches, since they depend on the shards only)."""
  mix = _mixture("resume_hosts_mix", lambda ds: ds)
  hosts = [_iterator(mix, num_shards=2, process_index=i, process_count=2)
           for i in range(2)]
  for host in hosts:
    for _ in range(4):
      next(host)
    position = _save(host, tmp_path / "s")
  parts = [next(host) for host in hosts]
  want = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  one = _iterator(mix, num_shards=2, process_index=0, process_count=1)
  one.restore(position)
  _assert_same(next(one), want)
