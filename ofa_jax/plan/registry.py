"""A task is one instruction line: `register_task` compiles it into a SeqIO task.

Why a plan: OFASys scans the instruction to decide preprocessing, target modality,
decoding and postprocessing (its "logical plan"). Here the same scan happens once,
at registration, and gives a frozen `TaskPlan` that travels with the `seqio.Task`
(`OFATask.plan`): the parsed template, a processor per modality, the target
modality, the decoding kind and its defaults (beam size, lengths, the closed-set
trie), the options, and the task's skip counters. The per-example work (graph-mode
TF inside tf.data) is in `plan_build.py`.

Registration is explicit (no import side effects) and idempotent only when asked:
registering a name that exists raises unless `replace=True`.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from ofa_jax import data_stats
from ofa_jax import features as F
from ofa_jax import instructions
from ofa_jax.plan import build as plan_build
from ofa_jax.plan import pipeline as plan_pipeline
from ofa_jax.modalities import get_processor
from ofa_jax.modalities.base import SlotContext
from ofa_jax.plan.source import SplitTaggedSource

M = F.Modality
DEFAULT_IMAGE_SIZE = 480  # the IMAGE processor's default


@dataclasses.dataclass(frozen=True)
class DecodingSpec:
  """How `predict_batch` decodes this task (defaults; callers may override).

  kind: "text" (free text), "box" (exactly 4 bins), "text_and_boxes" (text with
  boxes of 4 bins in it, e.g. detection), "closed_set" (a label trie),
  "image_codes" (only <code_k>), "audio_frames" / "motion_frames" (dense heads).
  `max_len` / `min_len` count the tokens before `</s>` (OFA's max_len_b), so a
  box is min_len = max_len = 4. `trie` is an `ofa_jax.trie.Trie` over
  `[<s>] + label tokens + [</s>]` for closed sets (None otherwise); `labels` the
  label strings in the order given (`trie.sequences[i]` is `labels[i]`'s).
  `max_prompt_len` is the longest forced decoder prompt an alternative can put
  before the answer (0: none, so the decode buffer is just `max_len`; None: not
  known at registration, e.g. a `no_loss` target slot, and decoding reserves the
  batch's target length). Task options `beam_size`, `max_len`, `min_len`,
  `max_prompt_len` override the defaults.
  """

  kind: str
  beam_size: int = 5
  max_len: int = 32
  min_len: int = 1
  labels: tuple[str, ...] = ()
  trie: Any = None
  sampling: bool = False
  max_prompt_len: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TaskPlan:
  """Everything derived from the instruction at registration."""

  name: str
  template: instructions.Template
  target_modality: Optional[F.Modality]
  decoding: DecodingSpec
  options: Mapping[str, Any]
  processors: Mapping[F.Modality, Any]
  vocab: Any
  counters: data_stats.SkipCounters
  dense_dims: Mapping[str, tuple[int, ...]]

  @property
  def task_id(self) -> int:
    return F.task_id_of(self.name)

  def skip_counts(self) -> dict[str, int]:
    """{reason: count} of dropped / repaired examples since the task was built."""
    return self.counters.snapshot()


class OFATask(seqio.Task):
  """A seqio.Task that carries its `TaskPlan` (`task.plan`)."""

  def __init__(self, *args, plan: TaskPlan, **kwargs):
    super().__init__(*args, **kwargs)
    self.plan = plan


# ---------------------------------------------------------------------------
# Output features: one layout for every task.
# ---------------------------------------------------------------------------
_DENSE_RANKS = {F.IMAGES: 4, F.AUDIO: 2, F.VIDEO: 4, F.MOTION: 2,
                F.TARGET_IMAGE: 3, F.TARGET_AUDIO: 2, F.TARGET_MOTION: 2}


def output_features(vocab) -> dict[str, seqio.Feature]:
  """Every task feature of `ofa_jax/features.py` (mixtures keep only these)."""
  out = {
      F.INPUTS: seqio.Feature(vocab, add_eos=False),
      F.TARGETS: seqio.Feature(vocab, add_eos=False),
      F.TARGET_LOSS_MASK: seqio.ContinuousFeature(dtype=tf.int32, rank=1),
      F.TARGET_KINDS: seqio.ContinuousFeature(dtype=tf.int32, rank=1),
      F.TARGET_INPUTS: seqio.ContinuousFeature(dtype=tf.int32, rank=1),
      F.SAMPLE_WEIGHT: seqio.ContinuousFeature(dtype=tf.float32, rank=0),
      F.TASK_ID: seqio.ContinuousFeature(dtype=tf.int32, rank=0),
  }
  for name, rank in _DENSE_RANKS.items():
    out[name] = seqio.ContinuousFeature(dtype=tf.float32, rank=rank)
  for name, companions in F.DENSE_STREAMS.items():
    for c in companions:
      rank = 2 if c == F.IMAGE_GEOMETRY else 1
      dtype = tf.float32 if c == F.IMAGE_GEOMETRY else tf.int32
      out[c] = seqio.ContinuousFeature(dtype=dtype, rank=rank)
  return out


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------
def _check_instruction(name: str, template: instructions.Template) -> None:
  """Structural limits of the feature layout, checked before any data is read."""
  for alt in template.alternatives:
    counts: dict[F.Modality, int] = {}
    for element in alt.source + alt.target:
      if isinstance(element, (instructions.InterleavedGroup,
                              instructions.ContrastiveChoice)):
        for s in element.slots:
          if not s.is_token_based:
            raise ValueError(
                f"task {name!r}: {element.to_string()} holds the dense slot "
                f"{s.to_string()}; groups and choices take token slots only")
    for slot in alt.slots():
      if slot.name is None:
        raise ValueError(f"task {name!r}: slot {slot.to_string()} has no field "
                         "name, so no data can fill it; write [TYPE:field,...]")
      if slot.is_source and not slot.is_token_based:
        counts[slot.modality] = counts.get(slot.modality, 0) + 1
    for m, n in counts.items():
      if m != M.IMAGE and n > 1:
        raise ValueError(f"task {name!r}: {n} {m.value} input slots; the layout "
                         f"carries one {m.value} stream per example")
    for slot in alt.target_slots():
      if slot.modality == M.VIDEO:
        raise ValueError(f"task {name!r}: VIDEO cannot be a target")


def _motion_dim(options: Mapping[str, Any]) -> int:
  """D of motion frames: `motion_dim`, else the length of `motion_stats` mean.

  The MOTION processor accepts either; an absent stream must have the same D as
  the present ones of the task, or the two cannot batch together.
  """
  if options.get("motion_dim") is not None:
    return int(options["motion_dim"])
  stats = options.get("motion_stats")
  if isinstance(stats, Mapping) and stats.get("mean") is not None:
    return len(stats["mean"])
  return 0


def _target_image_size(template: instructions.Template,
                       options: Mapping[str, Any]) -> int:
  """Side of the target image: the target IMAGE slot's `image_size` attribute,
  else the task option `target_image_size`, else 256 (the IMAGE processor's rule)."""
  for alt in template.alternatives:
    for slot in alt.target_slots():
      if slot.modality == M.IMAGE and slot.get("image_size") is not None:
        return int(slot.get("image_size"))
  return int(options.get("target_image_size", 256))


def _dense_dims(options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Trailing dims of each dense stream when a task does not use it."""
  size = int(options.get("image_size", DEFAULT_IMAGE_SIZE))
  video = int(options.get("video_image_size", size))
  motion = _motion_dim(options)
  return {
      F.IMAGES: (size, size, 3), F.AUDIO: (int(options.get("audio_num_mel_bins", 80)),),
      F.VIDEO: (video, video, 3), F.MOTION: (motion,),
      F.TARGET_IMAGE: (0, 3),
      F.TARGET_AUDIO: (int(options.get("audio_num_mel_bins", 80)),),
      F.TARGET_MOTION: (motion,),
  }


def _max_prompt_len(template: instructions.Template, vocab,
                    options: Mapping[str, Any]) -> Optional[int]:
  """Longest forced decoder prompt over the alternatives (None: unknown).

  The prompt is the untrained target tokens before the first trained one: plain
  target text (unless `decoder_plain_with_loss`) has a known length; a `no_loss`
  slot's length depends on the data, so the answer is then None.
  """
  plain = plan_build.plain_text_tokens(vocab, template)
  plain_trained = bool(options.get("decoder_plain_with_loss", False))
  longest = 0
  for alt in template.alternatives:
    n = 0
    for element in alt.target:
      if isinstance(element, instructions.PlainText):
        if not element.text.strip():
          continue
        if plain_trained:
          break
        n += len(plain[element.text.strip()])
        continue
      slots = (element.slots if isinstance(
          element, (instructions.InterleavedGroup, instructions.ContrastiveChoice))
               else (element,))
      if not all(s.is_token_based for s in slots):
        continue  # a dense target adds no tokens
      if any(s.has("no_loss") for s in slots):
        return None
      break
    longest = max(longest, n)
  return longest


def _check_distinct_labels(name: str, slot, proc, vocab, labels: Sequence[str],
                           trie) -> None:
  """Two labels with one tokenization would share a trie path, so the index of a
  decoded or best-scored path would no longer be the index into `labels`."""
  if len(trie.sequences) == len(labels):
    return
  seen: dict[tuple[int, ...], str] = {}
  for label in labels:
    (seq,) = proc.label_trie(vocab, [label], slot.has("uncased"),
                             slot.has("no_punctuation")).sequences
    if seq in seen:
      raise ValueError(
          f"task {name!r}, slot {slot.to_string()}: the closed-set labels "
          f"{seen[seq]!r} and {label!r} have the same tokens after normalization; "
          "decoding could not tell them apart. Remove one of them")
    seen[seq] = label


def _decoding(name: str, template: instructions.Template, vocab,
              processors: Mapping[F.Modality, Any], options: Mapping[str, Any]
              ) -> DecodingSpec:
  alt = template.alternatives[0]
  trained = [s for s in alt.target_slots() if not s.has("no_loss")]
  overrides = {k: options[k] for k in ("beam_size", "max_len", "min_len",
                                        "max_prompt_len") if k in options}
  overrides = {"max_prompt_len": _max_prompt_len(template, vocab, options),
               **overrides}
  target = alt.target_modality
  if target is None:
    return DecodingSpec(kind="text", **overrides)
  if target == M.IMAGE:
    side = _target_image_size(template, options) // 8
    return DecodingSpec(kind="image_codes", beam_size=1, max_len=side * side,
                        min_len=side * side, sampling=True, max_prompt_len=0)
  if target in (M.AUDIO, M.MOTION):
    return DecodingSpec(kind=f"{target.value.lower()}_frames", beam_size=1,
                        max_prompt_len=overrides["max_prompt_len"])
  closed = [s for s in trained if s.has("closed_set") or s.modality == M.CATEGORY]
  if closed:
    slot = closed[-1]
    proc = processors[slot.modality]
    ctx = SlotContext(task=name, slot_name=slot.name, attrs=dict(slot.attrs),
                      vocab=vocab, options=options, is_training=False)
    labels = proc.labels(ctx)
    if labels is None:
      raise ValueError(f"task {name!r}, slot {slot.to_string()}: a closed set needs "
                       "its labels: pass closed_set=[...] to register_task")
    trie = proc.label_trie(vocab, labels, slot.has("uncased"),
                           slot.has("no_punctuation"))
    _check_distinct_labels(name, slot, proc, vocab, labels, trie)
    longest = max(len(s) for s in trie.sequences) - 2  # without <s>, </s>
    return DecodingSpec(kind="closed_set", labels=tuple(labels), trie=trie,
                        **{"max_len": longest, **overrides})
  if len(trained) == 1 and trained[0].modality == M.BOX:
    return DecodingSpec(kind="box", **{"max_len": 4, "min_len": 4, **overrides})
  if plan_build.mixes_boxes_and_text(alt):
    return DecodingSpec(kind="text_and_boxes", **overrides)
  return DecodingSpec(kind="text", **overrides)


def register_task(name: str, instruction: str, source: seqio.DataSourceInterface,
                  *, metric_fns: Sequence[Callable[..., Any]] = (),
                  postprocess_fn: Optional[Callable[..., Any]] = None,
                  make_postprocess_fn: Optional[
                      Callable[[TaskPlan], Callable[..., Any]]] = None,
                  replace: bool = False, vocabulary=None,
                  train_splits: Sequence[str] = ("train",),
                  shuffle_buffer_size: Optional[int] = 1000,
                  **options: Any) -> OFATask:
  """Builds and registers the seqio task of one instruction line.

  Args:
    name: the task name (seqio's rules: letters, digits, `_`, `.`, `:`).
    instruction: the instruction; `|||` separates alternatives, one is drawn per
      example from SeqIO's seed.
    source: any seqio DataSource whose examples carry the named fields.
    metric_fns: seqio metric functions `(targets, predictions) -> dict`.
    postprocess_fn: default: decode with the target modality's `postprocess`.
    make_postprocess_fn: instead of `postprocess_fn`, a factory that receives the
      built `TaskPlan` (for postprocessing that needs the vocabulary or options).
    replace: replace a task of the same name instead of raising.
    vocabulary: an `OFAVocabulary` (default: `vocab.default_vocabulary()`).
    train_splits: splits on which training-only processing (masking, noise,
      augmentation) runs.
    shuffle_buffer_size: seqio's per-task shuffle buffer.
    **options: task-level modality options (image_size, closed_set=[...],
      decoder_plain_with_loss, sample_weight_field, beam_size, max_len, ...).

  Raises:
    instructions.InstructionError: the instruction does not parse (caret message).
    ValueError: a duplicate name without `replace`, or an instruction the layout
      cannot carry.
  """
  template = instructions.parse_template(instruction)
  _check_instruction(name, template)
  if name in seqio.TaskRegistry.names():
    if not replace:
      raise ValueError(f"task {name!r} is already registered; pass replace=True "
                       "to replace it")
    seqio.TaskRegistry.remove(name)
  if vocabulary is None:
    from ofa_jax import vocab as vocab_lib  # local: loading the model is slow
    vocabulary = vocab_lib.default_vocabulary()
  modalities = {s.modality for alt in template.alternatives for s in alt.slots()}
  processors = types.MappingProxyType({m: get_processor(m) for m in modalities})
  options = types.MappingProxyType(dict(options))
  plan = TaskPlan(
      name=name, template=template,
      target_modality=template.alternatives[0].target_modality,
      decoding=_decoding(name, template, vocabulary, processors, options),
      options=options, processors=processors, vocab=vocabulary,
      counters=data_stats.SkipCounters(name), dense_dims=_dense_dims(options))
  if postprocess_fn is not None and make_postprocess_fn is not None:
    raise ValueError(f"task {name!r}: give postprocess_fn or make_postprocess_fn, "
                     "not both")
  if make_postprocess_fn is not None:
    postprocess_fn = make_postprocess_fn(plan)
  task = OFATask(
      name, source=SplitTaggedSource(source, tuple(train_splits)),
      output_features=output_features(vocabulary),
      preprocessors=plan_pipeline.preprocessors(plan),
      postprocess_fn=postprocess_fn or plan_pipeline.default_postprocess_fn(plan),
      metric_fns=list(metric_fns), shuffle_buffer_size=shuffle_buffer_size,
      plan=plan)
  seqio.TaskRegistry.add_provider(name, task)
  return task


def register_mixture(name: str, tasks: Sequence[tuple[str | seqio.Task, float]],
                     *, replace: bool = False) -> seqio.Mixture:
  """A seqio mixture of registered tasks (or mixtures) with sampling rates.

  Rates are relative sampling weights (seqio's). Re-registering a name raises
  unless `replace=True`.
  """
  if name in seqio.MixtureRegistry.names():
    if not replace:
      raise ValueError(f"mixture {name!r} is already registered; pass replace=True "
                       "to replace it")
    seqio.MixtureRegistry.remove(name)
  entries = []
  for task, rate in tasks:
    task_name = task.name if isinstance(task, (seqio.Task, seqio.Mixture)) else task
    if (task_name not in seqio.TaskRegistry.names()
        and task_name not in seqio.MixtureRegistry.names()):
      raise ValueError(f"mixture {name!r}: {task_name!r} is not a registered task "
                       "or mixture")
    if rate <= 0:
      raise ValueError(f"mixture {name!r}: task {task_name!r} has rate {rate}; "
                       "rates must be > 0")
    entries.append((task_name, float(rate)))
  return seqio.MixtureRegistry.add(name, entries)


def task_plan(name: str) -> TaskPlan:
  """The plan of a registered ofa_jax task."""
  task = seqio.get_mixture_or_task(name)
  if not isinstance(task, OFATask):
    raise ValueError(f"{name!r} is not an ofa_jax task (register it with "
                     "ofa_jax.plan.register_task)")
  return task.plan


def skip_counts(name: str) -> dict[str, int]:
  """{"task/reason": count} for a task or every task of a mixture."""
  provider = seqio.get_mixture_or_task(name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  return data_stats.merged_snapshot(t.plan.counters for t in tasks
                                    if isinstance(t, OFATask))


__all__ = ["DecodingSpec", "OFATask", "TaskPlan", "output_features",
           "register_mixture", "register_task", "skip_counts", "task_plan"]

