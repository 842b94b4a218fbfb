"""Keeping a VQGAN's codebook in use: start it at data, restart dead codes.

Why: a nearest-neighbour codebook trained from scratch collapses. Drawn at
random, it lies far from the untrained encoder's features, so nearly every
position picks the same few codes; the commitment term then pulls the features
onto those codes and the rest are never chosen again (measured on the demo's
scenes: 3 % of 256 codes in use after 200 steps, reconstructions of background
only). Two standard remedies, both on the codebook's values only:

  * `init_codebook_from_data`: rows drawn from encoder features of real images
    ("vq" and "ema");
  * `restart_dead_codes`: an "ema" code unused for `restart_after` steps is
    moved to a random feature of the current batch (VQ-VAE practice, e.g.
    Jukebox's codebook restarts), inside the jitted step.

"gumbel" needs neither: its codes come from a learned projection.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from ofa_jax.model.vqgan.config import VQGANConfig
from ofa_jax.model.vqgan.model import VQGAN

# The quantizer's codebook inside the model's variables (path fragments).
CODEBOOK = ("quantize", "embedding")
EMA_COLLECTION = "vq_ema"


def find_path(tree: Any, parts: tuple[str, ...], what: str) -> tuple[str, ...]:
  """The one leaf path of `tree` holding `parts` in order (ValueError else)."""
  found = []
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = tuple(str(getattr(k, "key", k)) for k in path)
    it = iter(names)
    if all(any(part == n for n in it) for part in parts):
      found.append(names)
  if len(found) != 1:
    raise ValueError(f"{what}: expected one variable path with "
                     f"{'/'.join(parts)}, found "
                     f"{['/'.join(f) for f in found] or 'none'}")
  return found[0]


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _rows_from(features: jax.Array, count: int, rng: jax.Array,
               replace: bool) -> jax.Array:
  flat = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
  pick = jax.random.choice(rng, flat.shape[0], (count,),
                           replace=replace or flat.shape[0] < count)
  return flat[pick]


def init_codebook_from_data(config: VQGANConfig, variables: dict[str, Any],
                            pixels: jax.Array, rng: jax.Array
                            ) -> dict[str, Any]:
  """`variables` with a "vq" / "ema" codebook set to encoder features.

  Rows are drawn from the quantizer inputs of `pixels` (without replacement
  when there are enough positions). For "ema" the feature sums follow
  (embed_avg = rows * cluster_size), so the next EMA update starts there.
  """
  if config.quantizer == "gumbel":
    return variables
  features = VQGAN(config).apply(variables, pixels,
                                 method=VQGAN.encode_features)
  rows = _rows_from(features, config.n_embed, rng, replace=False)
  variables = flax.core.unfreeze(variables)
  collection = "params" if config.quantizer == "vq" else EMA_COLLECTION
  path = find_path(variables[collection], CODEBOOK, "the codebook")
  table = get_path(variables[collection], path[:-1])
  table[path[-1]] = rows.astype(table[path[-1]].dtype)
  if config.quantizer == "ema":
    table["embed_avg"] = rows * table["cluster_size"][:, None]
  return variables


def restart_dead_codes(ema_state: dict[str, Any], features: jax.Array,
                       counts: jax.Array, last_used: jax.Array,
                       step: jax.Array, rng: jax.Array, restart_after: int
                       ) -> tuple[dict[str, Any], jax.Array, jax.Array]:
  """Moves "ema" codes unused for `restart_after` steps onto batch features.

  `ema_state`: the "vq_ema" collection after this step's update; `counts`
  [n]: this step's code histogram; `last_used` [n]: the step each code was
  last chosen. A dead code gets a random feature of `features` as its vector,
  its feature sum to match and a count of one (as at initialization), and
  counts as used now. Returns (ema_state, last_used, number restarted).
  """
  last_used = jnp.where(counts > 0, step, last_used)
  dead = step - last_used >= restart_after
  path = find_path(ema_state, CODEBOOK, "the EMA codebook")
  ema_state = flax.core.unfreeze(ema_state)
  table = get_path(ema_state, path[:-1])
  rows = _rows_from(jax.lax.stop_gradient(features),
                    table["embedding"].shape[0], rng, replace=True)
  keep = ~dead[:, None]
  table["embedding"] = jnp.where(keep, table["embedding"], rows)
  table["cluster_size"] = jnp.where(dead, 1.0, table["cluster_size"])
  table["embed_avg"] = jnp.where(keep, table["embed_avg"], rows)
  return ema_state, jnp.where(dead, step, last_used), jnp.sum(dead)
