"""A DataSource wrapper that tells the preprocessors which split they are on.

Why: seqio preprocessors see only the dataset, `output_features` and
`sequence_length`, never the split, yet masking, noise and augmentation must run on
the training split only. The wrapper adds one boolean feature to every example;
the plan reads it with `tf.cond` and removes it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import seqio
import tensorflow as tf

TRAIN_KEY = "_ofa_split_train"
EVAL_KEY = "_ofa_split_eval"
# An optional int64 scalar field of a source example that the pipeline carries
# to its output unchanged: the caller's number for the example. Examples whose
# dense value is invalid are dropped inside tf.data; comparing the numbers that
# came out with those that went in tells a caller (the inference API) which of
# its examples were dropped, without re-running anything.
ITEM_KEY = "_ofa_item"


def is_training_dataset(ds: tf.data.Dataset) -> bool:
  """True for a dataset of a training split (as tagged by SplitTaggedSource)."""
  spec = ds.element_spec
  if TRAIN_KEY in spec:
    return True
  if EVAL_KEY in spec:
    return False
  raise ValueError("the dataset does not come from a SplitTaggedSource (no "
                   f"{TRAIN_KEY!r} / {EVAL_KEY!r} key); ofa_jax tasks wrap their "
                   "source at registration")


class SplitTaggedSource(seqio.DataSource):
  """Delegates to `inner`; tags examples with the kind of split (train / eval)."""

  def __init__(self, inner: seqio.DataSourceInterface,
               train_splits: Sequence[str] = ("train",)):
    self._inner = inner
    self._train_splits = tuple(train_splits)
    super().__init__(splits=inner.splits,
                     caching_permitted=inner.caching_permitted,
                     performs_internal_shuffling=getattr(
                         inner, "performs_internal_shuffling", False))

  @property
  def inner(self) -> seqio.DataSourceInterface:
    return self._inner

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self._inner.supports_arbitrary_sharding

  def list_shards(self, split: str) -> Sequence[str]:
    return self._inner.list_shards(split)

  def num_input_examples(self, split: str) -> Optional[int]:
    return self._inner.num_input_examples(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    ds = self._inner.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                 shard_info=shard_info)
    key = TRAIN_KEY if split in self._train_splits else EVAL_KEY
    if not isinstance(ds.element_spec, dict):
      raise ValueError(f"data source {self._inner!r} must yield dicts of features, "
                       f"got {ds.element_spec}")
    return ds.map(lambda ex: {**ex, key: tf.constant(True)},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def __repr__(self) -> str:
    return f"SplitTaggedSource({self._inner!r}, train_splits={self._train_splits})"
