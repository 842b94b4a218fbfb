"""A task is one instruction line: `register_task` compiles it into a SeqIO task.

Why a plan: OFASys scans the instruction to decide preprocessing, target modality,
decoding and postprocessing (its "logical plan"). Here the same scan happens once,
at registration, and gives a frozen `TaskPlan` that travels with the `seqio.Task`
(`OFATask.plan`): the parsed template, a processor per modality, the target
modality, the decoding kind and its defaults (beam size, lengths, the closed-set
trie), the options, and the task's skip counters. The per-example work (graph-mode
TF inside tf.data) is in `plan/build.py`; everything that depends on a slot's
type is asked of its modality object (`ofa_jax.modalities.get`). `plan/checks.py`
refuses a task whose streams the model cannot consume.

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
from ofa_jax import modalities
from ofa_jax.decoding import spec as decoding_spec
from ofa_jax.decoding.spec import DecodingSpec  # re-exported: plan.DecodingSpec
from ofa_jax.plan import build as plan_build
from ofa_jax.plan import checks as plan_checks
from ofa_jax.plan import pipeline as plan_pipeline
from ofa_jax.modalities.base import SlotContext
from ofa_jax.plan.source import SplitTaggedSource


@dataclasses.dataclass(frozen=True)
class TaskPlan:
  """Everything derived from the instruction at registration."""

  name: str
  template: instructions.Template
  target_modality: Optional[str]
  decoding: DecodingSpec
  options: Mapping[str, Any]
  processors: Mapping[str, Any]  # slot type -> its modality object
  vocab: Any
  counters: data_stats.SkipCounters
  # The modality whose rule chose `decoding.kind` (it postprocesses predictions).
  decoding_modality: Optional[str] = None
  # Registered for inspection only: a stream of it has no model piece, so the
  # trainer refuses it (`checks.check_task_for_model`).
  data_only: bool = False

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
def _dense_feature(stream) -> seqio.ContinuousFeature:
  return seqio.ContinuousFeature(
      dtype=tf.float32 if stream.is_float else tf.int32, rank=stream.rank)


def output_features(vocab) -> dict[str, seqio.Feature]:
  """The token features of `ofa_jax/features.py` and every stream of every
  registered dense modality (mixtures keep only these)."""
  out = {
      F.INPUTS: seqio.Feature(vocab, add_eos=False),
      F.TARGETS: seqio.Feature(vocab, add_eos=False),
      F.TARGET_LOSS_MASK: seqio.ContinuousFeature(dtype=tf.int32, rank=1),
      F.TARGET_KINDS: seqio.ContinuousFeature(dtype=tf.int32, rank=1),
      F.TARGET_INPUTS: seqio.ContinuousFeature(dtype=tf.int32, rank=1),
      F.SAMPLE_WEIGHT: seqio.ContinuousFeature(dtype=tf.float32, rank=0),
      F.TASK_ID: seqio.ContinuousFeature(dtype=tf.int32, rank=0),
  }
  for stream in modalities.streams():
    out[stream.name] = _dense_feature(stream)
  return out


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------
def _check_instruction(name: str, template: instructions.Template) -> None:
  """Structural limits of the feature layout, checked before any data is read."""
  for alt in template.alternatives:
    counts: dict[str, int] = {}
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
      limit = modalities.get(m).max_input_slots
      if limit is not None and n > limit:
        raise ValueError(f"task {name!r}: {n} {m} input slots; the layout "
                         f"carries {limit} {m} stream per example")
    for slot in alt.target_slots():
      if getattr(modalities.get(slot.modality), "input_only", False):
        raise ValueError(f"task {name!r}: {slot.modality} cannot be a target "
                         f"(slot {slot.to_string()})")


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
              processors: Mapping[str, Any], options: Mapping[str, Any]
              ) -> tuple[DecodingSpec, Optional[str]]:
  """The task's decoding and the modality whose rule chose it.

  The target's modality decides: a dense target its own kind; among token
  targets a closed-set slot (its trie), then a lone trained slot's kind (a box
  is exactly 4 bins), then a kind for slots trained together (boxes in text),
  else free text.
  """
  alt = template.alternatives[0]
  trained = [s for s in alt.target_slots() if not s.has("no_loss")]
  overrides = {k: options[k] for k in ("beam_size", "max_len", "min_len",
                                        "max_prompt_len") if k in options}
  overrides = {"max_prompt_len": _max_prompt_len(template, vocab, options),
               **overrides}
  target = alt.target_modality
  if target is None:
    return DecodingSpec(kind="text", **overrides), None
  if not alt.is_token_target:
    kind, defaults = processors[target].target_decoding(template, options)
    if "max_prompt_len" not in defaults:
      defaults = {**defaults, "max_prompt_len": overrides["max_prompt_len"]}
    return DecodingSpec(kind=kind, **defaults), target
  closed = [s for s in trained if processors[s.modality].is_closed_set(s)]
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
                        **{"max_len": longest, **overrides}), slot.modality
  if len(trained) == 1:
    kind, defaults = processors[trained[0].modality].solo_decoding
    return (DecodingSpec(kind=kind, **{**defaults, **overrides}),
            trained[0].modality)
  mixing = plan_build.mixing_modality(alt)
  if mixing is not None:
    return (DecodingSpec(kind=processors[mixing].mixed_decoding, **overrides),
            mixing)
  return DecodingSpec(kind="text", **overrides), None


def register_task(name: str, instruction: str, source: seqio.DataSourceInterface,
                  *, metric_fns: Sequence[Callable[..., Any]] = (),
                  postprocess_fn: Optional[Callable[..., Any]] = None,
                  make_postprocess_fn: Optional[
                      Callable[[TaskPlan], Callable[..., Any]]] = None,
                  replace: bool = False, vocabulary=None,
                  train_splits: Sequence[str] = ("train",),
                  shuffle_buffer_size: Optional[int] = 1000,
                  model_config: Any = None, data_only: bool = False,
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
    model_config: an `OFAConfig` the task must be trainable with: every dense
      input stream needs its adapter in `encoder_adapters`, every dense target
      its head in `target_heads`. Without it, the pieces must at least exist in
      the model registry (`ofa_jax/model/registry.py`).
    data_only: register a task whose streams no model piece consumes (AUDIO,
      VIDEO, MOTION inputs and dense targets today) for inspection
      (`tools/inspect_task.py`); the trainer refuses it.
    **options: task-level modality options (image_size, closed_set=[...],
      offline_cache=True (seqio's CacheDatasetPlaceholder after the build, for
      `tools/tokenize_images.py`; length-derived options must then be given),
      decoder_plain_with_loss, sample_weight_field, beam_size, max_len, ...).

  Raises:
    instructions.InstructionError: the instruction does not parse (caret message).
    ValueError: a duplicate name without `replace`, an instruction the layout
      cannot carry, or (without `data_only`) a stream no model piece consumes.
  """
  template = instructions.parse_template(instruction)
  _check_instruction(name, template)
  if data_only and model_config is not None:
    raise ValueError(f"task {name!r}: data_only=True registers a task that is "
                     "not trained; do not also pass model_config")
  if not data_only:
    plan_checks.check_consumable(name, template, model_config, dict(options))
  if options.get("offline_cache"):
    plan_checks.check_cacheable(name, template, dict(options))
  if name in seqio.TaskRegistry.names():
    if not replace:
      raise ValueError(f"task {name!r} is already registered; pass replace=True "
                       "to replace it")
    seqio.TaskRegistry.remove(name)
  if vocabulary is None:
    from ofa_jax import vocab as vocab_lib  # local: loading the model is slow
    vocabulary = vocab_lib.default_vocabulary()
  used = {s.modality for alt in template.alternatives for s in alt.slots()}
  processors = types.MappingProxyType({m: modalities.get(m) for m in used})
  options = types.MappingProxyType(dict(options))
  decoding, decoding_modality = _decoding(name, template, vocabulary, processors,
                                          options)
  decoding = decoding_spec.with_task_options(decoding, options, task=name)
  plan = TaskPlan(
      name=name, template=template,
      target_modality=template.alternatives[0].target_modality,
      decoding=decoding, options=options, processors=processors,
      vocab=vocabulary, counters=data_stats.SkipCounters(name),
      decoding_modality=decoding_modality, data_only=bool(data_only))
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

