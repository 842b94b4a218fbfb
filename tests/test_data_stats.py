"""Skip counters: exact counts from inside tf.data, per task, never crashing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofa_jax import data_stats
from ofa_jax.modalities import get_processor
from ofa_jax.modalities.base import SlotContext


def test_filter_invalid_counts_exactly_k_of_n():
  rng = np.random.RandomState(0)
  flags = rng.rand(50) < 0.3
  k = int(flags.sum())
  counters = data_stats.SkipCounters("task_a")
  ds = tf.data.Dataset.from_tensor_slices({"x": np.arange(50), "bad": flags})
  ds = data_stats.filter_invalid(ds, lambda ex: tf.logical_not(ex["bad"]), counters,
                                 "bad_example")
  kept = [int(ex["x"]) for ex in ds.as_numpy_iterator()]
  assert kept == [i for i in range(50) if not flags[i]]
  assert counters.snapshot() == {"bad_example": k}
  list(ds.as_numpy_iterator())  # a second epoch adds up
  assert counters.snapshot() == {"bad_example": 2 * k}
  counters.reset()
  assert counters.snapshot() == {"bad_example": 0}


def test_counts_are_exact_under_parallel_map_and_filter():
  counters = data_stats.SkipCounters("task_p")

  def mark(x):
    counters.count_if("odd", x % 2 == 1)
    return x

  ds = tf.data.Dataset.range(200).map(mark, num_parallel_calls=4)
  ds = data_stats.filter_invalid(ds, lambda x: x % 5 != 0, counters, "multiple_of_5")
  assert len(list(ds.as_numpy_iterator())) == 160
  assert counters.snapshot() == {"multiple_of_5": 40, "odd": 100}


def test_counters_work_eagerly_and_are_per_task():
  a = data_stats.SkipCounters("task_a", reasons=["x"])
  b = data_stats.SkipCounters("task_b")
  assert a.snapshot() == {"x": 0}
  assert int(a.count("x")) == 1
  a.count("x", 4)
  b.count_if("y", tf.constant(True))
  b.count_if("y", tf.constant(False))
  assert a.snapshot() == {"x": 5} and b.snapshot() == {"y": 1}
  assert a.total() == 5
  assert data_stats.merged_snapshot([a, b]) == {"task_a/x": 5, "task_b/y": 1}


def test_undecodable_images_are_dropped_and_counted_without_stopping(tmp_path):
  """The end-to-end contract: k corrupt images of n, n - k examples, count k."""
  buf = io.BytesIO()
  Image.fromarray(np.full((9, 7, 3), 128, np.uint8)).save(buf, "JPEG")
  good = buf.getvalue()
  values = [good, good[:40], b"", good, str(tmp_path / "missing.png").encode(),
            b"\x89PNG\r\n\x1a\n garbage", good]
  processor = get_processor("IMAGE")
  ctx = SlotContext(task="cap", slot_name="img", attrs={}, vocab=None,
                    options={"image_size": 8}, is_training=True)
  counters = data_stats.SkipCounters("cap")

  def preprocess(v):
    out = processor.preprocess_input(v, ctx)
    return {"images": out.values, "valid": out.valid}

  ds = tf.data.Dataset.from_tensor_slices(values).map(preprocess)
  ds = data_stats.filter_invalid(ds, lambda ex: ex["valid"], counters,
                                 "undecodable_image")
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 3
  assert all(ex["images"].shape == (8, 8, 3) and ex["images"].any() for ex in examples)
  assert counters.snapshot() == {"undecodable_image": 4}


def test_bad_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="task name"):
    data_stats.SkipCounters("")
  counters = data_stats.SkipCounters("t")
  with pytest.raises(ValueError, match="'t'.*reason.*'bad reason'"):
    counters.count("bad reason")
  ds = tf.data.Dataset.range(3)
  with pytest.raises(ValueError, match="boolean scalar"):
    data_stats.filter_invalid(ds, lambda x: x, counters, "r")


def test_iterator_with_counters_can_be_checkpointed(tmp_path):
  """The data position must be savable although the filter updates a variable."""
  counters = data_stats.SkipCounters("task_ckpt")
  ds = data_stats.filter_invalid(tf.data.Dataset.range(12), lambda x: x % 3 != 0,
                                 counters, "multiple_of_3")
  it = iter(ds)
  assert [int(next(it)) for _ in range(3)] == [1, 2, 4]
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.save(str(tmp_path / "it"))
  rest = [int(x) for x in it]
  ckpt.restore(path)
  assert [int(x) for x in it] == rest == [5, 7, 8, 10, 11]
