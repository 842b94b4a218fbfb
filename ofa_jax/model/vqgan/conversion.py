"""taming-transformers VQGAN state dicts <-> ``model.VQGAN`` variables.

Why driven by the Flax tree: the name table cannot drift from the network.
Every Flax variable names the one PyTorch key it comes from
(``flax_path_to_torch_key``), so any preset or depth converts, and every key
on either side is accounted for.

The Flax modules carry taming's attribute names (``encoder.down.0.block.1``
is Flax ``encoder/down_0/block_1``; ``mid.block_1`` keeps its name), so the
map is mechanical. Layouts: Conv ``OIHW`` -> ``HWIO``, GroupNorm ``weight``
-> ``scale``, embeddings as they are. The EMA quantizer's codebook and
statistics (collection ``vq_ema``) come from taming's ``EmbeddingEMA``
buffers ``quantize.embedding.{weight,cluster_size,embed_avg}``.

Checkpoints of the training module also hold the loss (discriminator, LPIPS):
``loss.*`` keys are skipped and counted. Unknown keys, missing keys and shape
mismatches are all collected and raised together, each by name.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import numpy as np

# Shared with the OFA checkpoint converter: the error type, the tensor layout
# changes and the nested-dict helpers.
from ofa_jax.checkpoint_conversion import _flatten as flatten_tree
from ofa_jax.checkpoint_conversion import _to_flax_layout as to_flax_layout
from ofa_jax.checkpoint_conversion import _to_torch_layout as to_torch_layout
from ofa_jax.checkpoint_conversion import _unflatten as unflatten_tree
from ofa_jax.checkpoint_conversion_names import ConversionError
from ofa_jax.model.vqgan.config import VQGANConfig
from ofa_jax.model.vqgan.model import abstract_variables
from ofa_jax.model.vqgan.quantize import EMA_COLLECTION

PARAMS = "params"
COLLECTIONS = (PARAMS, EMA_COLLECTION)
# Keys of the training loss (discriminator, perceptual net), not the VQGAN.
SKIPPED_PREFIXES = ("loss.",)

Path = tuple[str, ...]

_INDEXED_SEGMENT = re.compile(r"(down|up|block|attn)_(\d+)")
_LEAF_RENAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# vq_ema leaves -> taming's EmbeddingEMA tensors under `quantize.embedding`.
_EMA_LEAVES = {"embedding": "weight", "cluster_size": "cluster_size",
               "embed_avg": "embed_avg"}


class VQGANConversionError(ConversionError):
  """A taming checkpoint does not fit the VQGAN; lists every problem."""

  def __init__(self, problems: Iterable[str], context: str = ""):
    problems = list(problems)
    head = f"{context}: " if context else ""
    ValueError.__init__(
        self, f"{head}{len(problems)} problem(s) converting the taming VQGAN "
        "checkpoint:\n" + "\n".join(f"  - {p}" for p in problems))
    self.problems = problems


def flax_path_to_torch_key(collection: str, path: Path) -> str:
  """The taming state-dict key of one Flax variable.

  ``("encoder", "down_0", "block_1", "norm1", "scale")`` in ``params`` gives
  ``encoder.down.0.block.1.norm1.weight``.
  """
  if not path:
    raise ValueError(f"flax_path_to_torch_key: empty path in {collection!r}")
  if collection == EMA_COLLECTION:
    if len(path) != 2 or path[0] != "quantize" or path[1] not in _EMA_LEAVES:
      raise ValueError(f"flax_path_to_torch_key: unexpected {collection} "
                       f"variable {'/'.join(path)}")
    return f"quantize.embedding.{_EMA_LEAVES[path[1]]}"
  if collection != PARAMS:
    raise ValueError(f"flax_path_to_torch_key: unknown collection "
                     f"{collection!r}")
  parts: list[str] = []
  for i, segment in enumerate(path[:-1]):
    match = _INDEXED_SEGMENT.fullmatch(segment)
    if match and not (i and path[i - 1] == "mid"):  # mid.block_1 stays
      parts.extend(match.groups())
    else:
      parts.append(segment)
  leaf = path[-1]
  parts.append(_LEAF_RENAMES.get(leaf, f"{leaf}.weight"))
  return ".".join(parts)


def _layout(value: np.ndarray, collection: str, leaf: str, to_flax: bool
            ) -> np.ndarray:
  if collection != PARAMS:
    return value
  if to_flax:
    return to_flax_layout(value, leaf)
  return to_torch_layout(value, leaf)


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def convert_state_dict(state_dict: Mapping[str, Any], config: VQGANConfig,
                       *, skipped_prefixes: Iterable[str] = SKIPPED_PREFIXES
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
  """A taming VQGAN state dict -> ``(variables, report)``.

  Args:
    state_dict: key -> tensor / array (``VQModel`` / ``GumbelVQ`` naming).
    config: the VQGAN to convert to (its variable tree is computed with
      ``jax.eval_shape``; nothing is initialised).
    skipped_prefixes: keys dropped on purpose (the training loss's).

  Returns the variables (float32 numpy, ``{"params"[, "vq_ema"]}``) and a
  report: ``num_source_keys``, ``num_converted``, ``num_skipped``,
  ``skipped_prefixes``. Raises VQGANConversionError naming every unknown key,
  missing key and shape mismatch.
  """
  skipped_prefixes = tuple(skipped_prefixes)
  target = abstract_variables(config)
  skipped = [k for k in state_dict if k.startswith(skipped_prefixes)]
  source = {k: v for k, v in state_dict.items()
            if not k.startswith(skipped_prefixes)}
  problems: list[str] = []
  out: dict[Path, np.ndarray] = {}
  used: set[str] = set()
  for collection in COLLECTIONS:
    for path, leaf in flatten_tree(target.get(collection, {})).items():
      key = flax_path_to_torch_key(collection, path)
      flax_name = "/".join((collection,) + path)
      if key not in source:
        problems.append(f"missing key {key!r} (for Flax {flax_name}, shape "
                        f"{tuple(leaf.shape)})")
        continue
      used.add(key)
      raw = _as_numpy(source[key])
      value = _layout(raw, collection, path[-1], to_flax=True)
      if tuple(value.shape) != tuple(leaf.shape):
        problems.append(
            f"shape mismatch for {key!r}: checkpoint {tuple(raw.shape)} gives "
            f"{tuple(value.shape)} in Flax layout, but Flax {flax_name} is "
            f"{tuple(leaf.shape)}")
        continue
      out[(collection,) + path] = np.ascontiguousarray(value, dtype=leaf.dtype)
  for key in sorted(set(source) - used):
    problems.append(f"unknown key {key!r} (shape "
                    f"{tuple(np.shape(_as_numpy(source[key])))}): the "
                    f"{config.quantizer!r} VQGAN has no such variable")
  if problems:
    raise VQGANConversionError(problems, "convert_state_dict")
  report = {"num_source_keys": len(state_dict), "num_converted": len(out),
            "num_skipped": len(skipped),
            "skipped_prefixes": list(skipped_prefixes)}
  return unflatten_tree(out), report


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The reverse map: VQGAN variables -> a taming state dict (numpy)."""
  out = {}
  for collection in COLLECTIONS:
    for path, value in flatten_tree(variables.get(collection, {})).items():
      out[flax_path_to_torch_key(collection, path)] = _layout(
          np.asarray(value), collection, path[-1], to_flax=False)
  return out
