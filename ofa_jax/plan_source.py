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

TRAINING_KEY = "_ofa_is_training"


class SplitTaggedSource(seqio.DataSource):
  """Delegates to `inner`; adds `_ofa_is_training` (split in `train_splits`)."""

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
    flag = split in self._train_splits
    if not isinstance(ds.element_spec, dict):
      raise ValueError(f"data source {self._inner!r} must yield dicts of features, "
                       f"got {ds.element_spec}")
    return ds.map(lambda ex: {**ex, TRAINING_KEY: tf.constant(flag)},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def __repr__(self) -> str:
    return f"SplitTaggedSource({self._inner!r}, train_splits={self._train_splits})"
