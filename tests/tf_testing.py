"""Shared checks for TF preprocessors: eager and inside tf.data must agree.

Every modality's preprocessing runs eagerly in unit tests and debugging, but in
graph mode inside `tf.data` in a real pipeline; ops that behave differently in
the two (Python branches on tensors, py_function, nested datasets) are the bugs
these helpers exist to catch. One copy here keeps the modality tests checking the
same thing the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from ofa_jax.modalities.base import SlotContext


def slot_context(task: str, slot_name: str, *, attrs: Optional[Mapping[str, Any]] = None,
                 options: Optional[Mapping[str, Any]] = None, vocab: Any = None,
                 training: bool = False, seed: Optional[Sequence[int]] = None,
                 geometry: Optional[Sequence[float]] = None) -> SlotContext:
  """A SlotContext with plain-Python seed and image geometry turned into tensors."""
  return SlotContext(
      task=task, slot_name=slot_name, attrs=attrs or {}, vocab=vocab,
      options=options or {}, is_training=training,
      seed=None if seed is None else tf.constant(seed, tf.int32),
      geometry=None if geometry is None else tf.constant(geometry, tf.float32))


def to_numpy(tree: Any) -> Any:
  """Every tensor of a nested structure as numpy (None stays None)."""
  return tf.nest.map_structure(lambda t: None if t is None else np.asarray(t), tree)


def eager_and_in_tf_data(fn: Callable[[tf.Tensor], Any], value: Any) -> tuple[Any, Any]:
  """fn(value) run eagerly and as a `tf.data` map (graph mode), both as numpy."""
  eager = to_numpy(fn(tf.constant(value)))
  ds = tf.data.Dataset.from_tensors(tf.constant(value)).map(fn)
  graph = to_numpy(ds.get_single_element())
  return eager, graph


def assert_same(a: Any, b: Any) -> None:
  """Same nested structure and, leaf by leaf, the same values."""
  tf.nest.assert_same_structure(a, b)
  for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
    np.testing.assert_array_equal(x, y)


def same_eager_and_in_tf_data(fn: Callable[[tf.Tensor], Any], value: Any) -> Any:
  """The eager output of fn(value), after checking tf.data gives the same."""
  eager, graph = eager_and_in_tf_data(fn, value)
  assert_same(eager, graph)
  return eager
