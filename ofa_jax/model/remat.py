"""Rematerialization policies of the transformer layers, selectable by name.

Why named policies: at the large and huge sizes the activations a layer keeps
for its backward pass outgrow the parameters; recomputing some of them trades
step time for memory, and which trade is right depends on the mesh and the
batch. A name in the config (`OFAConfig.remat_policy`, gin `REMAT_POLICY`)
picks one without touching source; every policy computes the same numbers.

  none           keep every intermediate (fastest, most memory)
  full           keep only the layer's inputs, recompute the whole layer
  dots_saveable  keep the outputs of every matmul (projections, scores and
                 attention-weighted values), recompute the elementwise ops
  minimal        keep only the weight matmuls' outputs (no batch dimension:
                 q/k/v/out projections, FFN); recompute the attention scores,
                 whose [B, H, Lq, Lk] size grows with the square of the length
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax

from ofa_jax.model.config import REMAT_POLICIES


def checkpoint_policy(name: str) -> Optional[Callable[..., bool]]:
  """The `jax.checkpoint` policy of `name` (None: save nothing, i.e. "full")."""
  policies = {
      "full": None,
      "dots_saveable": jax.checkpoint_policies.dots_saveable,
      "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }
  if name not in policies:
    raise ValueError(f"remat policy {name!r} has no checkpoint policy; known: "
                     f"{REMAT_POLICIES} ('none' does not rematerialize)")
  return policies[name]


def wrap_layer(layer_cls: type[nn.Module], policy: str,
               static_argnums: Sequence[int]) -> Any:
  """`layer_cls` itself for "none", else its `nn.remat` under `policy`.

  static_argnums count from the module call's first argument after `self`
  being 1 (flax's convention), e.g. the `deterministic` flag.
  """
  if policy not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat policy {policy!r}; known: {REMAT_POLICIES}")
  if policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=checkpoint_policy(policy),
                  static_argnums=tuple(static_argnums))
