"""`DecodingSpec`: the one description of how a task's target decodes.

Why one type: the plan knows what a task's answer is (free text, a box, a closed
set, image codes) and OFA's defaults for it; decoding needs the concrete search
(beam, greedy, sampling), its knobs and the constraints over the id layout. Two
types for the same thing drifted (length conventions, the trie built twice), so
the plan stores this spec (`TaskPlan.decoding`) and every consumer (the model's
`predict_batch` / `score_batch`, the evaluator, inference, the Python API, the
benchmarks) takes it, changed only through `replace(**overrides)`, which checks
the names.

This module is importable without JAX (the data side builds specs at task
registration); the device forms (constraints, the edge-list trie) are made on
demand.

Where per-task options come from, in order (later wins):
1. the plan's defaults for the target kind (`plan.registry._decoding`);
2. task options of `register_task(...)`: any field name below as a keyword
   (`beam_size=3, no_repeat_ngram_size=3`), or `decoding={...}`, whose keys must
   all be field names (see `with_task_options`);
3. the evaluation / inference entry points: `decode_overrides` (every task) and
   `decoding_overrides={"task": {...}}` (one task), settable from gin, e.g.
   `evaluation.evaluate_checkpoint.decoding_overrides = {'demo_caption':
   {'beam_size': 3}}` (likewise `infer.infer_task.decoding_overrides`)
   (see `per_task_overrides`);
4. the Python API's keyword arguments (`Generalist.inference(beam_size=...)`).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Optional

from ofa_jax.modalities.spec import DecodingKind

METHODS = ("beam", "greedy", "sample")


def _text_constraints(spec: "DecodingSpec", layout: Any) -> tuple:
  del spec
  from ofa_jax.decoding import constraints as dc  # pylint: disable=g-import-not-at-top
  return (dc.text_constraint(layout),)


def _trie_constraints(spec: "DecodingSpec", layout: Any) -> tuple:
  from ofa_jax.decoding import constraints as dc  # pylint: disable=g-import-not-at-top
  return (dc.TrieConstraint(spec.device_trie(), eos_id=layout.eos_id),)


def _label_view(value: Any) -> dict[str, Any]:
  return {"label": value if isinstance(value, str) else None}


# The kinds of every token target: free text, and a label of a closed set
# (whatever slot type carries it). The modalities declare the others
# (`Modality.decoding_kinds`: a box, image codes, a dense head's frames).
TEXT = DecodingKind("text", constraints=_text_constraints)
CLOSED_SET = DecodingKind("closed_set", fixed_length=True,
                          constraints=_trie_constraints, views=_label_view)
_GENERIC_KINDS = {k.name: k for k in (TEXT, CLOSED_SET)}


def known_kinds() -> tuple[str, ...]:
  """Every kind name: the generic ones, then those the modalities declare."""
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  return tuple(_GENERIC_KINDS) + tuple(
      k.name for k in modalities.decoding_kinds())


def kind_of(name: str) -> DecodingKind:
  """The `DecodingKind` named `name` (a modality's file is imported for it)."""
  kind = _GENERIC_KINDS.get(name)
  if kind is None:
    from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
    kind = modalities.decoding_kind(name)
  if kind is None:
    raise ValueError(f"DecodingSpec.kind={name!r}; expected one of "
                     f"{known_kinds()}")
  return kind


@dataclasses.dataclass(frozen=True)
class DecodingSpec:
  """How one task's target decodes.

  Attributes:
    kind: "text" (free text), "box" (exactly 4 bins per box), "text_and_boxes"
      (text with boxes of 4 bins in it, e.g. detection), "closed_set" (a label
      trie), "image_codes" (only <code_k>), "audio_frames" / "motion_frames"
      (dense heads: no token decoder).
    method: "beam", "greedy" or "sample"; None: "sample" for image codes (OFA's
      text-to-image), else "beam".
    beam_size: hypotheses per example: beams, or samples when sampling.
    max_len: free tokens before `</s>` (OFA's max_len_b; a box is 4). None: only
      the decode buffer (the batch's target length) bounds them.
    min_len: `</s>` is banned until this many free tokens were emitted.
    max_prompt_len: room for a forced decoder prompt before the answer (0 for
      tasks without one; None: unknown, the batch's target length is reserved
      or, where the examples are known, their longest prompt; see
      `decoding.prompts`).
    labels: a closed set's labels in order; `trie.sequences[i]` is `labels[i]`'s.
    trie: the closed set's host `ofa_jax.trie.Trie` over `[<s>] + label tokens
      + [</s>]`, built once by the plan with the slot's normalisation.
    length_penalty: fairseq's lenpen (beam scores / free_len ** length_penalty).
    no_repeat_ngram_size: ban repeating any n-gram of this size (0: off).
    num_boxes: boxes a "box" target decodes.
    temperature, top_k, top_p: sampling knobs; top_k None: 256 for image codes,
      else 0 (off).
    use_cache: decode against the KV cache (False reruns the decoder over the
      whole prefix every step, as fairseq does; for comparisons).
    return_all: return every hypothesis ([B, K, L]) instead of the best.
    score_candidates: evaluate a closed set by scoring every label under
      teacher forcing (OFA's VQA / ImageNet evaluation) instead of decoding.
    sampling: constructor shorthand for `method="sample"` (not stored).
  """

  kind: str = "text"
  method: Optional[str] = None
  beam_size: int = 5
  max_len: Optional[int] = 32
  min_len: int = 1
  max_prompt_len: Optional[int] = None
  labels: tuple[str, ...] = ()
  trie: Any = None
  length_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  num_boxes: int = 1
  temperature: float = 1.0
  top_k: Optional[int] = None
  top_p: float = 1.0
  use_cache: bool = True
  return_all: bool = False
  score_candidates: bool = False
  sampling: dataclasses.InitVar[bool] = False

  def __post_init__(self, sampling: bool):
    kind = kind_of(self.kind)
    method = self.method
    if sampling:
      if method not in (None, "sample"):
        raise ValueError(f"DecodingSpec: sampling=True contradicts "
                         f"method={method!r}")
      method = "sample"
    if method is None:
      method = kind.method
    if method not in METHODS:
      raise ValueError(f"DecodingSpec.method={method!r}; expected one of {METHODS}")
    object.__setattr__(self, "method", method)
    if self.top_k is None:
      object.__setattr__(self, "top_k", kind.top_k)
    object.__setattr__(self, "labels", tuple(self.labels))
    if kind is CLOSED_SET and self.trie is None:
      raise ValueError("DecodingSpec(kind='closed_set') needs a trie (the plan "
                       "builds it from the closed set's labels)")
    if self.trie is not None and not hasattr(self.trie, "sequences"):
      raise TypeError(f"DecodingSpec.trie must be an ofa_jax.trie.Trie, got "
                      f"{type(self.trie).__name__}")
    for name in ("beam_size", "num_boxes"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"DecodingSpec.{name}={getattr(self, name)} must be >= 1")
    for name in ("min_len", "no_repeat_ngram_size", "top_k"):
      if int(getattr(self, name)) < 0:
        raise ValueError(f"DecodingSpec.{name}={getattr(self, name)} must be >= 0")
    if self.max_len is not None and self.max_len < 0:
      raise ValueError(f"DecodingSpec.max_len={self.max_len} must be >= 0")
    if self.max_prompt_len is not None and self.max_prompt_len < 0:
      raise ValueError(f"DecodingSpec.max_prompt_len={self.max_prompt_len} must "
                       "be >= 0")
    if not 0.0 < float(self.top_p) <= 1.0:
      raise ValueError(f"DecodingSpec.top_p={self.top_p} must be in (0, 1]")
    if float(self.temperature) < 0:
      raise ValueError(f"DecodingSpec.temperature={self.temperature} must be >= 0")

  # ---- changing it ----------------------------------------------------------
  def replace(self, **overrides: Any) -> "DecodingSpec":
    """A copy with `overrides` (field names; an unknown name is an error)."""
    if not overrides:
      return self
    check_names(overrides, "DecodingSpec.replace")
    if overrides.pop("sampling", False):  # the shorthand, on a resolved method
      if overrides.get("method", "sample") != "sample":
        raise ValueError(f"DecodingSpec.replace: sampling=True contradicts "
                         f"method={overrides['method']!r}")
      overrides["method"] = "sample"
    return dataclasses.replace(self, **overrides)

  # ---- what decoding reads ---------------------------------------------------
  @property
  def decoding_kind(self) -> DecodingKind:
    """The declaration of `kind` (generic, or a modality's)."""
    return kind_of(self.kind)

  @property
  def is_token_kind(self) -> bool:
    return self.decoding_kind.token_decoder

  @property
  def fixed_length(self) -> bool:
    """The target fixes the answer length: `max_len` / `min_len` overrides of
    free-length targets do not apply (a box, a label of the set, image codes)."""
    return self.decoding_kind.fixed_length

  @property
  def max_free_len(self) -> Optional[int]:
    """Free positions of the decode buffer: `max_len` tokens plus `</s>`."""
    return None if self.max_len is None else int(self.max_len) + 1

  @property
  def num_hypotheses(self) -> int:
    """Rows decoded per example: beams, samples, or 1 (greedy)."""
    return 1 if self.method == "greedy" else int(self.beam_size)

  @property
  def scores_candidates(self) -> bool:
    """True when this spec is evaluated by all-candidate scoring."""
    return self.score_candidates and self.decoding_kind is CLOSED_SET

  def require_token_decoder(self, where: str) -> "DecodingSpec":
    """Itself; raises when the kind has no token decoder (dense heads)."""
    if not self.is_token_kind:
      raise ValueError(f"{where}: the target decodes as {self.kind!r}, which has "
                       "no token decoder (dense targets come from their output "
                       "heads)")
    return self

  def device_trie(self):
    """The closed set's trie as `decoding.constraints.DenseTrie` (None otherwise)."""
    if self.trie is None:
      return None
    # pylint: disable-next=g-import-not-at-top
    from ofa_jax.decoding import constraints as dc
    return dc.DenseTrie.from_trie(self.trie)

  def candidates(self):
    """int32 [C, Lc]: each label's tokens after `<s>`, for all-candidate scoring."""
    if self.trie is None:
      raise ValueError(f"DecodingSpec(kind={self.kind!r}) has no closed set to "
                       "score")
    from ofa_jax.decoding import scoring  # pylint: disable=g-import-not-at-top
    return scoring.candidates_from_trie(self.trie)

  def constraints(self, layout: Any) -> tuple:
    """The constraints of this kind over the id layout (`constraints.IdLayout`)."""
    self.require_token_decoder("DecodingSpec.constraints")
    build = self.decoding_kind.constraints or _text_constraints
    return build(self, layout)

  def cache_key(self) -> tuple:
    """A hashable value of everything that shapes the compiled decoder."""
    values = []
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name == "trie" and value is not None:
        value = tuple(value.sequences)
      values.append(value)
    return tuple(values)


_FIELDS = tuple(f.name for f in dataclasses.fields(DecodingSpec)) + ("sampling",)


def check_names(overrides: Mapping[str, Any], where: str) -> None:
  """Raises naming the first key of `overrides` that is not a spec field."""
  for name in overrides:
    if name not in _FIELDS:
      close = difflib.get_close_matches(str(name), _FIELDS, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(f"{where}: unknown decoding option {name!r}{hint}; the "
                       f"options are {sorted(_FIELDS)}")


# Task options of `register_task` that the plan's own `_decoding` reads (it
# applies them per kind); `with_task_options` applies the rest.
_PLAN_READS = ("beam_size", "max_len", "min_len", "max_prompt_len")
# Task options that would collide with other meanings (labels is the slot's
# closed set, trie is built by the plan).
_NOT_TASK_OPTIONS = ("kind", "labels", "trie")


def with_task_options(spec: DecodingSpec, options: Mapping[str, Any], *,
                      task: str) -> DecodingSpec:
  """`spec` with the decoding options of `register_task(name, ..., **options)`.

  Any field name is a task option (`no_repeat_ngram_size=3`, `method="greedy"`,
  `score_candidates=True`, ...); `decoding={...}` groups them, and there every
  key must be a field name: an unknown one is an error naming it and the task.
  `kind`, `labels` and `trie` come from the instruction, never from options.
  """
  where = f"task {task!r}"
  taken = {k: options[k] for k in _FIELDS
           if k in options and k not in _PLAN_READS + _NOT_TASK_OPTIONS}
  grouped = options.get("decoding")
  if grouped is not None:
    if not isinstance(grouped, Mapping):
      raise ValueError(f"{where}: option decoding= must be a dict of decoding "
                       f"options, got {type(grouped).__name__}")
    check_names(grouped, f"{where}, option decoding=")
    taken.update(grouped)
  for name in _NOT_TASK_OPTIONS:
    if name in taken:
      raise ValueError(f"{where}: decoding option {name!r} comes from the "
                       "instruction (and closed_set=[...]), not from options")
  if spec.fixed_length and grouped is not None:
    for name in ("max_len", "min_len"):
      if name in grouped:
        raise ValueError(f"{where}: the target decodes as {spec.kind!r}, whose "
                         f"length is fixed; {name}= does not apply")
  try:
    return spec.replace(**taken)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None


def per_task_overrides(
    task_names: Any, decode_overrides: Optional[Mapping[str, Any]],
    decoding_overrides: Optional[Mapping[str, Mapping[str, Any]]], where: str
) -> dict[str, dict[str, Any]]:
  """{task: overrides}: `decode_overrides` for every task, then each task's own.

  Both are checked before any work: an unknown option, or a task name that is
  not among `task_names`, is an error naming it.
  """
  names = list(task_names)
  common = dict(decode_overrides or {})
  check_names(common, f"{where}: decode_overrides")
  per_task = dict(decoding_overrides or {})
  for task, overrides in per_task.items():
    if task not in names:
      close = difflib.get_close_matches(str(task), names, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(f"{where}: decoding_overrides names task {task!r}, which "
                       f"is not evaluated here{hint}; tasks: {names}")
    if not isinstance(overrides, Mapping):
      raise ValueError(f"{where}: decoding_overrides[{task!r}] must be a dict, "
                       f"got {type(overrides).__name__}")
    check_names(overrides, f"{where}: decoding_overrides[{task!r}]")
  return {name: {**common, **dict(per_task.get(name, {}))} for name in names}


def for_task(spec: DecodingSpec, task: str, *,
             overrides: Optional[Mapping[str, Any]] = None,
             score_candidates: Optional[bool] = None) -> DecodingSpec:
  """A task's spec for evaluation / inference: token kinds only, overrides applied.

  `score_candidates` True / False forces / forbids all-candidate scoring of a
  closed set; None keeps the task's own choice.
  """
  spec.require_token_decoder(f"task {task!r}")
  changes = dict(overrides or {})
  if score_candidates is not None:
    changes["score_candidates"] = bool(score_candidates)
  try:
    return spec.replace(**changes)
  except (TypeError, ValueError) as e:
    raise ValueError(f"task {task!r}: {e}") from None
