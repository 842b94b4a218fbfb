"""How a task's target slot decodes: `DecodeSettings`, resolved from the plan.

Why separate from `plan.DecodingSpec`: the plan states what the task is (a box, a
closed set, image codes, free text) and OFA's defaults; these settings add what
only decoding cares about (method, length penalty, n-gram blocking, sampling
knobs, cache on/off) and turn the slot kind into constraints over the id layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ofa_jax.decoding import constraints as dc


@dataclasses.dataclass(frozen=True, eq=False)
class DecodeSettings:
  """Resolved decoding settings (from a task's `plan.DecodingSpec` + overrides).

  kind: "text", "box", "text_and_boxes", "closed_set" or "image_codes"; method:
  "beam", "greedy"
  or "sample". `max_len` bounds the free tokens, `</s>` included (None: the
  batch's target length bounds everything). The decode buffer is
  `max_prompt_len + max_len` long; `max_prompt_len` defaults to the batch's
  target length when the batch carries targets (a forced prompt may fill them),
  and 0 otherwise; set it to 0 for tasks without a decoder prompt. `trie` is a
  `decoding_constraints.DenseTrie`.
  """

  kind: str = "text"
  method: str = "beam"
  beam_size: int = 5
  max_len: Optional[int] = None
  max_prompt_len: Optional[int] = None
  min_len: int = 0
  length_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  num_boxes: int = 1
  trie: Optional[dc.DenseTrie] = None
  num_samples: int = 1
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  use_cache: bool = True
  return_all: bool = False

  KINDS = ("text", "box", "text_and_boxes", "closed_set", "image_codes")
  METHODS = ("beam", "greedy", "sample")

  def __post_init__(self):
    if self.kind not in self.KINDS:
      raise ValueError(f"DecodeSettings.kind={self.kind!r}; token decoding knows "
                       f"{self.KINDS} (dense targets have their own generators)")
    if self.method not in self.METHODS:
      raise ValueError(f"DecodeSettings.method={self.method!r}; expected one of "
                       f"{self.METHODS}")
    if self.kind == "closed_set" and self.trie is None:
      raise ValueError("DecodeSettings(kind='closed_set') needs a trie")
    if self.beam_size < 1 or self.num_samples < 1:
      raise ValueError(f"beam_size={self.beam_size} and num_samples="
                       f"{self.num_samples} must be >= 1")

  @classmethod
  def from_spec(cls, spec: Any = None, **overrides) -> "DecodeSettings":
    """From `ofa_jax.plan.DecodingSpec` (duck-typed) and keyword overrides.

    The spec's `max_len` counts free tokens before `</s>` (OFA's max_len_b);
    one position is added for `</s>` (a box: 4 bins + `</s>` = 5). The spec's
    `max_prompt_len` (when known) becomes the decode buffer's prompt room.
    """
    kw: dict[str, Any] = {}
    if spec is not None:
      kind = getattr(spec, "kind")
      kw["kind"] = kind
      kw["beam_size"] = int(getattr(spec, "beam_size", 5))
      kw["min_len"] = int(getattr(spec, "min_len", 0))
      if getattr(spec, "max_len", None) is not None:
        kw["max_len"] = int(spec.max_len) + 1
      # The plan knows the longest prompt its instruction can force (0 for most
      # tasks); without it the buffer reserves the whole target length.
      if getattr(spec, "max_prompt_len", None) is not None:
        kw["max_prompt_len"] = int(spec.max_prompt_len)
      if getattr(spec, "sampling", False):
        kw["method"] = "sample"
        kw["num_samples"] = kw["beam_size"]
      if kind == "image_codes":  # OFA's text-to-image: no decoder prompt
        kw.update(method="sample", top_k=256, num_samples=kw["beam_size"],
                  max_prompt_len=0)
      trie = getattr(spec, "trie", None)
      if trie is not None:
        kw["trie"] = dc.DenseTrie.from_tables(trie)
    kw.update(overrides)
    if kw.get("method") == "greedy":
      kw["beam_size"] = 1
    return cls(**kw)

  def constraints(self, layout: dc.IdLayout) -> tuple:
    if self.kind == "box":
      return (dc.box_constraint(layout, self.num_boxes),)
    if self.kind == "image_codes":
      if self.max_len is None:
        raise ValueError("image_codes decoding needs max_len (codes + 1)")
      return (dc.image_constraint(layout, self.max_len - 1),)
    if self.kind == "closed_set":
      return (dc.TrieConstraint(self.trie, eos_id=layout.eos_id),)
    if self.kind == "text_and_boxes":
      return (dc.BoxRunConstraint(layout),)
    return (dc.text_constraint(layout),)
