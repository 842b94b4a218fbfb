"""Decoding: compiled search loops over a KV cache, and the rules they follow.

`spec` is `DecodingSpec`, the one description of how a task decodes (the plan
stores it); `prompts` the forced decoder prompts; `search` beam search (OFA's
generator rules); `sampling` greedy and sampled decoding; `scoring`
all-candidate scoring of closed sets; `constraints` the id ranges, tries and box
runs that restrict each step.

The names of `search` load on first use (PEP 562), so the data side can import
`ofa_jax.decoding.spec` and `ofa_jax.decoding.prompts` without loading JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

from ofa_jax.decoding.spec import DecodingSpec

_SEARCH_NAMES = ("NEG_INF", "DecodingRules", "DecodingState", "LogitsProcessor",
                 "TokensToLogits", "banned_ngram_mask", "beam_search",
                 "expand_rows", "gather_rows", "step_log_probs", "top_k")
_PROMPT_NAMES = ("answer_tokens",)

__all__ = ["DecodingSpec", *_SEARCH_NAMES, *_PROMPT_NAMES]


def __getattr__(name: str) -> Any:
  if name in _SEARCH_NAMES:
    return getattr(importlib.import_module("ofa_jax.decoding.search"), name)
  if name in _PROMPT_NAMES:
    return getattr(importlib.import_module("ofa_jax.decoding.prompts"), name)
  raise AttributeError(f"module 'ofa_jax.decoding' has no attribute {name!r}")
