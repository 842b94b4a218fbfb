"""The seqio preprocessors and the default postprocess_fn of a `TaskPlan`.

Pipeline per task (all graph mode, stateless randomness from SeqIO's seeds):

1. check that the source provides every field the instruction names (a clear error
   naming the task, slot and field, before any example is read);
2. per example: draw the `|||` alternative from the example seed, build the
   features (`plan_build.build_alternative`) for the train or eval variant;
3. drop examples whose dense value is invalid, counting them per modality;
4. count repaired boxes, clipped dense frames (`clipped_<modality>`) and
   truncated token streams; remove private keys; let the iterator be saved.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from ofa_jax import data_stats
from ofa_jax import features as F
from ofa_jax.plan import build as B
from ofa_jax.instructions import InterleavedGroup
from ofa_jax.plan.source import EVAL_KEY, TRAIN_KEY, is_training_dataset

M = F.Modality

# sequence_length key -> the processor options it sets unless the task sets them.
_LENGTH_OPTIONS = {
    F.AUDIO: ("audio_max_frames",),
    F.TARGET_AUDIO: ("target_audio_max_frames",),
    F.VIDEO: ("video_n_frames",),
    F.MOTION: ("motion_length", "motion_max_length"),
    F.TARGET_MOTION: ("motion_length", "motion_max_length"),
    F.TARGET_IMAGE: ("target_image_size",),
}


def _used_modalities(plan) -> set[F.Modality]:
  return {s.modality for alt in plan.template.alternatives for s in alt.slots()}


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
  used = _used_modalities(plan)
  for key, names in _LENGTH_OPTIONS.items():
    length = (sequence_length or {}).get(key)
    if length:
      for name in names:
        options.setdefault(name, int(length))
  if M.MOTION in used and "motion_max_length" in options:
    options.setdefault("motion_min_length", min(10, options["motion_max_length"]))
  return options


def _check_static_lengths(plan, out: Mapping[str, tf.Tensor],
                          sequence_length: Optional[Mapping[str, int]]) -> None:
  """A dense stream longer than its length key is a configuration error."""
  for key in (F.IMAGES, F.AUDIO, F.VIDEO, F.MOTION, F.TARGET_AUDIO,
              F.TARGET_MOTION, F.TARGET_IMAGE):
    if sequence_length is None or key not in sequence_length:
      continue
    n = out[key].shape[0]
    if n is not None and n > sequence_length[key]:
      raise ValueError(
          f"task {plan.name!r}: {key!r} has {n} along its first axis but "
          f"sequence_length[{key!r}] is {sequence_length[key]}; raise the length "
          "or set the modality option (e.g. audio_max_frames, video_n_frames)")


def build_config(plan, sequence_length: Optional[Mapping[str, int]] = None
                 ) -> B.BuildConfig:
  """The builder's configuration for one `sequence_length` (also for eager use)."""
  return B.BuildConfig(
      task=plan.name, vocab=plan.vocab,
      options=_effective_options(plan, sequence_length),
      processors=plan.processors, dense_dims=plan.dense_dims,
      decoder_plain_with_loss=bool(plan.options.get("decoder_plain_with_loss",
                                                    False)),
      sample_weight_field=plan.options.get("sample_weight_field"),
      plain_tokens=B.plain_text_tokens(plan.vocab, plan.template))


def build_examples(plan) -> Callable[..., tf.data.Dataset]:
  def fn(ds: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
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
    def per_example(ex, seed):
      return variant(ex, tf.cast(tf.reshape(seed, [2]), tf.int32), is_training)

    return per_example(ds)
  return fn


def filter_and_count(plan) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  counters: data_stats.SkipCounters = plan.counters
  dense_used = [m for m in B.DENSE_INPUT_STREAMS if m in _used_modalities(plan)]

  def fn(ds: tf.data.Dataset) -> tf.data.Dataset:
    for m in dense_used:
      key = B.VALID_KEY.format(m.value.lower())
      ds = data_stats.filter_invalid(ds, lambda ex, key=key: ex[key], counters,
                                     f"invalid_{m.value.lower()}")
    clipped = {f"clipped_{m.value.lower()}": B.DENSE_CLIPPED_KEY.format(
        m.value.lower()) for m in dense_used}
    for reason in ("clipped_boxes", "truncated_inputs", "truncated_targets",
                   *clipped):
      counters._variable(reason)  # pylint: disable=protected-access

    def count(ex):
      updates = [
          counters.count("clipped_boxes", ex[B.CLIPPED_KEY]),
          counters.count_if("truncated_inputs", ex[B.TRUNCATED_KEY.format(F.INPUTS)]),
          counters.count_if("truncated_targets",
                            ex[B.TRUNCATED_KEY.format(F.TARGETS)]),
      ] + [counters.count(reason, ex[key]) for reason, key in clipped.items()]
      with tf.control_dependencies(updates):
        return {k: tf.identity(v) for k, v in ex.items() if not k.startswith("_")}

    # The counters' assign_add is external state: without this, saving the
    # iterator of a task with no dense slot (no filter_invalid) fails.
    return data_stats.checkpointable(
        ds.map(count, num_parallel_calls=tf.data.AUTOTUNE))
  return fn


def preprocessors(plan) -> list[Callable[..., tf.data.Dataset]]:
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


def prompt_text(example: Optional[Mapping[str, Any]], vocab) -> str:
  """The forced decoder prompt of an example: its leading loss-0 target tokens."""
  if not example or F.TARGETS not in example or F.TARGET_LOSS_MASK not in example:
    return ""
  mask = np.asarray(example[F.TARGET_LOSS_MASK]).reshape(-1)
  n = int(np.argmax(mask > 0)) if np.any(mask > 0) else len(mask)
  targets = np.asarray(example[F.TARGETS]).reshape(-1)[:n]
  return vocab.decode(targets.tolist()).strip() if n else ""


def _strip_prompt(text: str, prompt: str) -> str:
  text = text.strip()
  if prompt and text.startswith(prompt):
    return text[len(prompt):].strip()
  return text


def _box_ctx(plan, example) -> dict[str, Any]:
  ctx: dict[str, Any] = {"vocab": plan.vocab}
  for k in ("image_size", "max_image_size"):
    if k in plan.options:
      ctx[k] = plan.options[k]
  # The first input IMAGE slot's size attributes win, as in preprocessing.
  image = next((s for s in plan.template.alternatives[0].source_slots()
                if s.modality == M.IMAGE), None)
  for k in ("image_size", "max_image_size"):
    if image is not None and image.attrs.get(k) is not None:
      ctx[k] = image.attrs[k]
  if example is not None and F.IMAGE_GEOMETRY in example:
    geometry = np.asarray(example[F.IMAGE_GEOMETRY])
    if geometry.ndim == 2 and geometry.shape[0] > 0:
      ctx["image_geometry"] = geometry[0]
  return ctx


_BIN_RE = re.compile(r"<bin_[0-9]+>")


def _box_label_pairs(plan, text: str, example) -> list[tuple[list[float], str]]:
  """`<bin>x4 label <bin>x4 label ...` -> [(box in pixels, label), ...]."""
  box_proc = plan.processors[M.BOX]
  ctx = _box_ctx(plan, example)
  out = []
  bins = list(_BIN_RE.finditer(text))
  k = 0
  while k + 4 <= len(bins):
    group = bins[k:k + 4]
    end = bins[k + 4].start() if k + 4 < len(bins) else len(text)
    label = text[group[-1].end():end].strip()
    ids = plan.vocab.encode("".join(b.group(0) for b in group))
    box = box_proc.postprocess(np.asarray(ids), ctx)
    out.append((np.asarray(box, np.float64).tolist(), label))
    k += 4
  return out


def default_postprocess_fn(plan) -> Callable[..., Any]:
  """Decoded text -> the target modality's value (str, box [4] in pixels, ...)."""
  alt = plan.template.alternatives[0]
  detection = any(isinstance(e, InterleavedGroup)
                  and {s.modality for s in e.slots} >= {M.BOX}
                  for e in alt.target)

  def postprocess(output: Any, example: Optional[Mapping[str, Any]] = None,
                  is_target: bool = False) -> Any:
    del is_target  # targets and predictions decode the same way
    if plan.decoding.kind in ("image_codes", "audio_frames", "motion_frames"):
      return output
    text = _strip_prompt(_text(output, plan.vocab), prompt_text(example, plan.vocab))
    if plan.decoding.kind == "box":
      ids = plan.vocab.encode(text)
      box = np.asarray(plan.processors[M.BOX].postprocess(
          np.asarray(ids), _box_ctx(plan, example)), np.float64)
      # No complete box decoded: None (a metric counts a miss, never crashes).
      return box.tolist() if np.all(np.isfinite(box)) else None
    if detection:
      return _box_label_pairs(plan, text, example)
    return text

  return postprocess
