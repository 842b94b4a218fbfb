"""The seqio preprocessors and the default postprocess_fn of a `TaskPlan`.

Pipeline per task (all graph mode, stateless randomness from SeqIO's seeds):

1. check that the source provides every field the instruction names (a clear error
   naming the task, slot and field, before any example is read);
2. per example: draw the `|||` alternative from the example seed, build the
   features (`plan/build.py` `build_alternative`) for the train or eval variant;
3. drop examples whose dense value is invalid, counting them per modality;
4. count repaired boxes, clipped dense frames (`clipped_<modality>`) and
   truncated token streams; remove private keys; let the iterator be saved.

A task registered with `offline_cache=True` splits step 2 in two around seqio's
`CacheDatasetPlaceholder`: the features are built without `sequence_length`
(seqio runs pre-cache steps without it), and cut to the lengths after the cache.
`tools/tokenize_images.py` caches such a task with its target images already
turned into VQ codes; `use_cached=True` then reads them back.

Why the mapped functions are marked `tf.autograph.experimental.do_not_convert`:
the builder and the modality objects are written for graph mode already (data
dependent control flow is `tf.cond` / `tf.switch_case` / `tf.while_loop`; a
Python `if` only looks at static shapes, dtypes and options), so autograph has
nothing to rewrite, yet converting every function they call took about a third
of the time of building a task's dataset (tests/test_plan.py: 72 -> 48 s). A
Python `if` or loop on a tensor added later fails loudly when traced ("using a
`tf.Tensor` as a Python `bool` is not allowed"), it is not silently changed.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from ofa_jax import data_stats
from ofa_jax import features as F
from ofa_jax import modalities
from ofa_jax.decoding import prompts
from ofa_jax.plan import build as B
from ofa_jax.plan.source import (EVAL_KEY, ITEM_KEY, TRAIN_KEY,
                                 is_training_dataset)


def _dense_used(plan) -> list[Any]:
  """The dense modality objects the task's instruction uses."""
  return [p for p in plan.processors.values() if not p.token_based]


def check_fields(plan) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  def fn(ds: tf.data.Dataset) -> tf.data.Dataset:
    spec = ds.element_spec
    for k, alt in enumerate(plan.template.alternatives):
      for slot in alt.slots():
        if slot.name is not None and slot.name not in spec:
          where = (f" (alternative {k})" if len(plan.template.alternatives) > 1
                   else "")
          raise ValueError(
              f"task {plan.name!r}, slot {slot.to_string()}{where}: the data has "
              f"no field {slot.name!r}; its fields are "
              f"{sorted(x for x in spec if x not in (TRAIN_KEY, EVAL_KEY))}")
    field = plan.options.get("sample_weight_field")
    if field and field not in spec:
      raise ValueError(f"task {plan.name!r}: sample_weight_field {field!r} is not a "
                       f"field of the data ({sorted(spec)})")
    return ds
  return fn


def _effective_options(plan, sequence_length: Optional[Mapping[str, int]]
                       ) -> dict[str, Any]:
  options = dict(plan.options)
  for modality in modalities.dense_modalities():
    for key, names in modality.length_options.items():
      length = (sequence_length or {}).get(key)
      if length:
        for name in names:
          options.setdefault(name, int(length))
  for modality in _dense_used(plan):
    options = modality.effective_options(options)
  return options


def _check_static_lengths(plan, out: Mapping[str, tf.Tensor],
                          sequence_length: Optional[Mapping[str, int]]) -> None:
  """A dense stream longer than its length key is a configuration error; a key
  missing from `sequence_length` means the stream is absent (length 0)."""
  if sequence_length is None:
    return
  for stream in modalities.streams():
    if stream.length != stream.name:
      continue
    key = stream.name
    limit = sequence_length.get(key, 0)
    n = out[key].shape[0]
    if n is not None and n > limit:
      said = (f"sequence_length[{key!r}] is {limit}" if key in sequence_length
              else f"sequence_length has no {key!r} (the stream is absent)")
      raise ValueError(
          f"task {plan.name!r}: {key!r} has {n} along its first axis but "
          f"{said}; raise the length or set the modality option")


def build_config(plan, sequence_length: Optional[Mapping[str, int]] = None
                 ) -> B.BuildConfig:
  """The builder's configuration for one `sequence_length` (also for eager use)."""
  return B.BuildConfig(
      task=plan.name, vocab=plan.vocab,
      options=_effective_options(plan, sequence_length),
      processors=plan.processors,
      decoder_plain_with_loss=bool(plan.options.get("decoder_plain_with_loss",
                                                    False)),
      sample_weight_field=plan.options.get("sample_weight_field"),
      plain_tokens=B.plain_text_tokens(plan.vocab, plan.template))


def build_examples(plan, cut: bool = True) -> Callable[..., tf.data.Dataset]:
  """Step 2; with cut=False the streams keep their natural lengths (pre-cache:
  seqio refuses a `sequence_length` argument there)."""
  if not cut:
    return lambda ds: _build(plan, ds, None)
  return lambda ds, sequence_length=None: _build(plan, ds, sequence_length)


def _build(plan, ds: tf.data.Dataset, sequence_length) -> tf.data.Dataset:
  """The features of every example for one `sequence_length` (None: uncut)."""
  cfg = build_config(plan, sequence_length)
  alternatives = plan.template.alternatives

  def variant(ex, seed, is_training):
    if len(alternatives) == 1:
      out = B.build_alternative(cfg, alternatives[0], 0, ex, seed, is_training)
    else:
      pick = tf.random.stateless_uniform(
          [], tf.random.experimental.stateless_fold_in(seed, 77), 0,
          len(alternatives), tf.int32)
      out = tf.switch_case(pick, [
          (lambda k=k, a=a: B.build_alternative(cfg, a, k, ex, seed, is_training))
          for k, a in enumerate(alternatives)])
    _check_static_lengths(plan, out, sequence_length)
    return B.truncate(out, sequence_length, plan.vocab.eos_id)

  is_training = is_training_dataset(ds)

  @seqio.map_over_dataset(num_seeds=1)
  @tf.autograph.experimental.do_not_convert
  def per_example(ex, seed):
    out = variant(ex, tf.cast(tf.reshape(seed, [2]), tf.int32), is_training)
    if ITEM_KEY in ex:  # the caller's example number (source.ITEM_KEY)
      out[ITEM_KEY] = ex[ITEM_KEY]
    return out

  return per_example(ds)


def cut_to_lengths(plan) -> Callable[..., tf.data.Dataset]:
  """The length checks and truncation of step 2, after an offline cache."""
  def fn(ds: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
    cfg = build_config(plan, sequence_length)

    @tf.autograph.experimental.do_not_convert
    def cut(ex):
      # A cache leaves out the streams that are empty whatever the example
      # (seqio's reader cannot parse a zero-sized trailing axis): absent again.
      ex = {**B.empty_features(cfg), **ex}
      _check_static_lengths(plan, ex, sequence_length)
      return B.truncate(ex, sequence_length, plan.vocab.eos_id)
    return ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE)
  return fn


def filter_and_count(plan) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  counters: data_stats.SkipCounters = plan.counters
  dense_used = [B.reason_name(m.name) for m in _dense_used(plan)]

  def fn(ds: tf.data.Dataset) -> tf.data.Dataset:
    for m in dense_used:
      key = B.VALID_KEY.format(m)
      ds = data_stats.filter_invalid(ds, lambda ex, key=key: ex[key], counters,
                                     f"invalid_{m}")
    clipped = {f"clipped_{m}": B.DENSE_CLIPPED_KEY.format(m) for m in dense_used}
    for reason in ("clipped_boxes", "truncated_inputs", "truncated_targets",
                   *clipped):
      counters._variable(reason)  # pylint: disable=protected-access

    @tf.autograph.experimental.do_not_convert
    def count(ex):
      updates = [
          counters.count("clipped_boxes", ex[B.CLIPPED_KEY]),
          counters.count_if("truncated_inputs", ex[B.TRUNCATED_KEY.format(F.INPUTS)]),
          counters.count_if("truncated_targets",
                            ex[B.TRUNCATED_KEY.format(F.TARGETS)]),
      ] + [counters.count(reason, ex[key]) for reason, key in clipped.items()]
      with tf.control_dependencies(updates):
        return {k: tf.identity(v) for k, v in ex.items()
                if k == ITEM_KEY or not k.startswith("_")}

    # The counters' assign_add is external state: without this, saving the
    # iterator of a task with no dense slot (no filter_invalid) fails.
    return data_stats.checkpointable(
        ds.map(count, num_parallel_calls=tf.data.AUTOTUNE))
  return fn


def preprocessors(plan) -> list[Callable[..., tf.data.Dataset]]:
  if plan.options.get("offline_cache"):
    return [check_fields(plan), build_examples(plan, cut=False),
            seqio.CacheDatasetPlaceholder(required=False),
            cut_to_lengths(plan), filter_and_count(plan)]
  return [check_fields(plan), build_examples(plan), filter_and_count(plan)]


# ---------------------------------------------------------------------------
# Postprocessing (host side)
# ---------------------------------------------------------------------------
def _text(value: Any, vocab) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, str):
    return value
  return vocab.decode(np.asarray(value).reshape(-1).tolist())


def default_postprocess_fn(plan) -> Callable[..., Any]:
  """Decoded text -> the task's value (str, box [4] in pixels, ...).

  The modality whose rule chose the decoding kind (`plan.decoding_modality`)
  turns the decoded text into its value; a dense target's output is returned as
  generated; free text is the text without its forced prompt.
  """
  owner = (plan.processors[plan.decoding_modality]
           if plan.decoding_modality is not None else None)
  dense = owner is not None and not owner.token_based

  def postprocess(output: Any, example: Optional[Mapping[str, Any]] = None,
                  is_target: bool = False) -> Any:
    del is_target  # targets and predictions decode the same way
    if dense:
      return output
    text = prompts.answer_text(_text(output, plan.vocab), example, plan.vocab)
    if owner is None:
      return text
    return owner.postprocess_prediction(text, plan, example, plan.decoding.kind)

  return postprocess
