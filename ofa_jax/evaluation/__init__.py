"""Evaluation: decode and score every task of a mixture, in training and offline.

`evaluator` holds the `Evaluator` (seqio metrics, eval loss, JSONL predictions)
and `evaluate_checkpoint`; `runner` the jitted batch runner shared with
inference and the Python API.
"""

from ofa_jax.evaluation.evaluator import (Evaluator, evaluate_checkpoint,
                                          flatten_metrics)

__all__ = ["Evaluator", "evaluate_checkpoint", "flatten_metrics"]
