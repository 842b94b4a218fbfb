"""Decoding: compiled search loops over a KV cache, and the rules they follow.

`search` is beam search (OFA's generator rules); `sampling` greedy and sampled
decoding; `scoring` all-candidate scoring of closed sets; `constraints` the id
ranges, tries and box runs that restrict each step; `settings` how a task's plan
becomes concrete decoding settings.
"""

from ofa_jax.decoding.search import (NEG_INF, DecodingRules, DecodingState,
                                     LogitsProcessor, TokensToLogits,
                                     answer_tokens, banned_ngram_mask,
                                     beam_search, expand_rows,
                                     forced_prompt_from_targets, gather_rows,
                                     step_log_probs, top_k)

__all__ = ["NEG_INF", "DecodingRules", "DecodingState", "LogitsProcessor",
           "TokensToLogits", "answer_tokens", "banned_ngram_mask", "beam_search",
           "expand_rows", "forced_prompt_from_targets", "gather_rows",
           "step_log_probs", "top_k"]
