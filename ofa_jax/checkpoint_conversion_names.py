"""OFA PyTorch state-dict names: fairseq vs HF/modelscope, and what is not a weight.

Why a separate module: released OFA weights exist in two namings (the authors'
fairseq ``.pt`` files and the HF / modelscope ports). Both are first brought to
one *canonical* naming, the HF one without the ``model.`` prefix (e.g.
``decoder.layers.0.cross_attn_mid_layer_norm.weight``); only then are they
mapped to Flax (``checkpoint_conversion.py``). Keeping the string rules here
lets the tests rename a state dict both ways without a model.

Known non-parameter entries are dropped *explicitly* (``IGNORED_BUFFERS``); any
other key that the model does not have is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

import numpy as np

HF = "hf"
FAIRSEQ = "fairseq"

# The module names that differ between fairseq (OFA-Sys/OFA
# models/ofa/unify_transformer_layer.py) and HF/modelscope: (layers, fairseq, hf).
# One table gives both directions and the markers that tell the two apart, so a
# name added here can never be renamed one way only.
_RENAMED_MODULES = (
    ("encoder", "attn_ln", "self_attn_mid_layer_norm"),
    ("decoder", "self_attn_ln", "self_attn_mid_layer_norm"),
    ("decoder", "cross_attn_ln", "cross_attn_mid_layer_norm"),
    ("(?:en|de)coder", "ffn_layernorm", "ffn_layer_norm"),
    ("decoder", "encoder_attn_layer_norm", "cross_attn_layer_norm"),
    ("decoder", "encoder_attn", "cross_attn"),
)


def _rename_rules(src: int, dst: int) -> tuple[tuple[str, str], ...]:
  """(pattern, replacement) pairs from column `src` to column `dst` of the table."""
  return tuple((rf"^({row[0]}\.layers\.\d+)\.{row[src]}\.", rf"\1.{row[dst]}.")
               for row in _RENAMED_MODULES)


_FAIRSEQ_TO_HF = _rename_rules(1, 2)
_HF_TO_FAIRSEQ = _rename_rules(2, 1)
_FAIRSEQ_MARKERS = re.compile(
    r"\.(" + "|".join(sorted({row[1] for row in _RENAMED_MODULES})) + r")\."
    r"|^(en|de)coder\.version$")
_HF_MARKERS = re.compile(
    r"\.(" + "|".join(sorted({row[2] for row in _RENAMED_MODULES})) + r")\.")

# Entries of OFA state dicts that are not weights (canonical names), with why.
IGNORED_BUFFERS: Mapping[str, str] = {
    r"^(en|de)coder\.version$": "fairseq format version number",
    r"^(en|de)coder\.token_rp_bucket$": "1D bucket index table, recomputed",
    r"^(en|de)coder\.image_rp_bucket$": "2D bucket index table, recomputed",
    r"^decoder\.image_position_idx$": "code-token image ids, recomputed",
    r"\.num_batches_tracked$": "BatchNorm step counter (momentum is fixed)",
}
_IGNORED = tuple(re.compile(p) for p in IGNORED_BUFFERS)

# One matrix serves encoder input, decoder input and the output projection
# (--share-all-embeddings). Checkpoints hold it under one to three names.
SHARED_EMBEDDING = "encoder.embed_tokens.weight"
SHARED_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight",
                            "decoder.embed_tokens.weight",
                            "decoder.output_projection.weight")


class ConversionError(ValueError):
  """A checkpoint does not fit the model; the message lists every problem."""

  def __init__(self, problems: Iterable[str], context: str = ""):
    self.problems = list(problems)
    head = f"{context}: " if context else ""
    super().__init__(
        f"{head}{len(self.problems)} problem(s) converting the OFA checkpoint:\n"
        + "\n".join(f"  - {p}" for p in self.problems))


def detect_naming(keys: Iterable[str]) -> str:
  """'fairseq' or 'hf' from the layer names; mixed namings are an error."""
  keys = list(keys)
  fs = [k for k in keys if _FAIRSEQ_MARKERS.search(k)]
  hf = [k for k in keys if _HF_MARKERS.search(k)]
  if fs and hf:
    raise ConversionError(
        [f"fairseq-named key {fs[0]!r} and HF-named key {hf[0]!r} in one "
         "state dict"], "detect_naming")
  return FAIRSEQ if fs else HF


def _rename(key: str, rules) -> str:
  for pattern, repl in rules:
    new = re.sub(pattern, repl, key)
    if new != key:
      return new
  return key


def fairseq_to_hf_name(key: str) -> str:
  """A key in OFA-Sys/OFA's (fairseq) spelling -> modelscope/HF's; others unchanged."""
  return _rename(key, _FAIRSEQ_TO_HF)


def hf_to_fairseq_name(key: str) -> str:
  """The inverse of `fairseq_to_hf_name`."""
  return _rename(key, _HF_TO_FAIRSEQ)


def is_ignored(key: str) -> bool:
  """Whether a (canonical) key is a non-weight buffer of `IGNORED_BUFFERS`."""
  return any(p.search(key) for p in _IGNORED)


def _strip_prefix(keys: list[str]) -> str:
  """The wrapper prefix all keys share ('model.', 'module.', ...) or ''."""
  for prefix in ("module.model.", "model.", "module."):
    if keys and all(k.startswith(prefix) for k in keys):
      return prefix
  return ""


def _split_in_proj(sd: dict[str, np.ndarray]) -> None:
  """Old fairseq attention kept q, k, v in one ``in_proj_*`` tensor (in place)."""
  for key in [k for k in sd if re.search(r"\.in_proj_(weight|bias)$", k)]:
    value = sd.pop(key)
    base, kind = key.rsplit(".in_proj_", 1)
    for name, part in zip(("q_proj", "k_proj", "v_proj"),
                          np.split(value, 3, axis=0)):
      sd[f"{base}.{name}.{kind}"] = part


@dataclasses.dataclass(frozen=True)
class Canonical:
  """A state dict in canonical naming, remembering how the source spelled it."""

  arrays: dict[str, np.ndarray]
  naming: str  # FAIRSEQ or HF
  prefix: str  # wrapper prefix the source keys had ('model.', ...)
  embedding_key: str  # the source name of the shared embedding

  def source_key(self, key: str) -> str:
    """The name ``key`` (canonical) has, or would have, in the source file."""
    if key == SHARED_EMBEDDING:
      return self.prefix + self.embedding_key
    return self.prefix + (hf_to_fairseq_name(key) if self.naming == FAIRSEQ
                          else key)


def canonicalize(state_dict: Mapping[str, np.ndarray],
                 ignore_patterns: Iterable[str] = ()) -> Canonical:
  """Brings a fairseq or HF state dict to the canonical naming.

  Drops ``IGNORED_BUFFERS`` and keys matching ``ignore_patterns`` (regexes,
  e.g. ``^classification_heads\\.`` for a fine-tuned checkpoint with heads this
  model lacks); merges the tied embedding aliases after checking that they are
  equal.
  """
  user_ignored = tuple(re.compile(p) for p in ignore_patterns)
  prefix = _strip_prefix(list(state_dict))
  sd = {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items()}
  sd = {k: v for k, v in sd.items()
        if not is_ignored(k) and not any(p.search(k) for p in user_ignored)}
  naming = detect_naming(sd)
  if naming == FAIRSEQ:
    sd = {fairseq_to_hf_name(k): v for k, v in sd.items()}
  _split_in_proj(sd)
  problems = []
  present = [k for k in SHARED_EMBEDDING_ALIASES if k in sd]
  embedding_key = present[0] if present else SHARED_EMBEDDING
  if present:
    first = sd[present[0]]
    for alias in present[1:]:
      other = sd.pop(alias)
      if other.shape != first.shape or not np.array_equal(other, first):
        problems.append(
            f"{prefix}{alias!r} differs from {prefix}{present[0]!r}: ofa_jax "
            "ties all three embeddings (--share-all-embeddings); untied "
            "checkpoints are not supported")
    sd.pop(present[0])
    sd[SHARED_EMBEDDING] = first
  if problems:
    raise ConversionError(problems, "canonicalize")
  return Canonical(sd, naming, prefix, embedding_key)


def canonicalize_state_dict(
    state_dict: Mapping[str, np.ndarray],
    ignore_patterns: Iterable[str] = (),
) -> tuple[dict[str, np.ndarray], str]:
  """``canonicalize`` returning just ``(arrays, naming)``."""
  c = canonicalize(state_dict, ignore_patterns)
  return c.arrays, c.naming


def to_naming(canonical: Mapping[str, np.ndarray], naming: str,
              *, with_tied_aliases: bool = True) -> dict[str, np.ndarray]:
  """The canonical dict in fairseq or HF naming (tests, export back to torch).

  With ``with_tied_aliases`` the shared embedding appears under all three names,
  as in the state dicts that fairseq and modelscope write.
  """
  if naming not in (HF, FAIRSEQ):
    raise ValueError(f"to_naming: naming must be {HF!r} or {FAIRSEQ!r}, "
                     f"got {naming!r}")
  out = {}
  for key, value in canonical.items():
    aliases = (SHARED_EMBEDDING_ALIASES
               if key == SHARED_EMBEDDING and with_tied_aliases else (key,))
    for alias in aliases:
      out[hf_to_fairseq_name(alias) if naming == FAIRSEQ else alias] = value
  return out
