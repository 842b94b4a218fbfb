"""OFA PyTorch checkpoints (fairseq or HF/modelscope naming) -> ofa_jax variables.

Why: people already have OFA weights (Tiny to Huge, pretrained and fine-tuned);
ofa_jax must load them and produce the same outputs. The conversion is driven
by the Flax model's own variable tree: every Flax leaf names the one PyTorch key
it comes from (``flax_path_to_torch_key``), so the name table cannot drift from
the network, whatever its depth or ResNet size.

Checks (all collected, reported together, each naming the key):
* a PyTorch key the model has no place for (unknown key),
* a Flax variable whose PyTorch key is absent (missing key),
* a shape that does not match after the layout change (shape mismatch).
Known non-parameter buffers are dropped explicitly
(``checkpoint_conversion_names.IGNORED_BUFFERS``).

Layout changes: Linear ``[out, in]`` -> Dense kernel ``[in, out]``; Conv
``OIHW`` -> ``HWIO``; BatchNorm running stats -> the ``batch_stats`` collection;
embeddings, LayerNorms, head scales and relative-position tables as they are.

Output on disk (``save_converted``): an orbax pytree checkpoint directory
(``checkpoints.save_array_tree``, readable with ``ocp.StandardCheckpointer``)
holding ``{"params": ..., "batch_stats": ...}`` plus ``conversion.json`` (config
name, overrides, source file, naming). ``load_converted`` reads it back.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ofa_jax import checkpoint_conversion_names as names
from ofa_jax import run_dir
from ofa_jax.checkpoint_conversion_names import ConversionError

CHECKPOINT_SUBDIR = run_dir.CONVERTED_CHECKPOINT
METADATA_FILE = run_dir.CONVERSION
PARAMS = "params"
BATCH_STATS = "batch_stats"
COLLECTIONS = (PARAMS, BATCH_STATS)
# The shared token embedding (padded to `OFAConfig.padded_vocab_size` rows).
EMBEDDING_PATH = ("embed_tokens",)

Path = tuple[str, ...]


# ---------------------------------------------------------------------------
# Flax path <-> canonical PyTorch key.
# ---------------------------------------------------------------------------
# Whole-path renames (Flax path prefix -> PyTorch key prefix), first match wins.
_PREFIX_RENAMES: tuple[tuple[Path, tuple[str, ...]], ...] = (
    # The shared embedding lives at the model level in Flax.
    (("embed_tokens",), ("encoder", "embed_tokens")),
)


def _prefix_renames() -> tuple[tuple[Path, tuple[str, ...]], ...]:
  """`_PREFIX_RENAMES`, then each registered encoder adapter's: an adapter is
  a submodule of the Flax encoder, and its class says where OFA keeps its
  parameters (`ofa_key_prefix`, e.g. directly under `encoder.`)."""
  from ofa_jax.model import adapters  # pylint: disable=g-import-not-at-top
  renames = list(_PREFIX_RENAMES)
  for name, cls in adapters.registered_classes():
    prefix = getattr(cls, "ofa_key_prefix", None)
    if prefix is not None:
      renames.append((("encoder", adapters.adapter_name(name)), tuple(prefix)))
  return tuple(renames)

# Single segments: Flax module name -> PyTorch attribute path.
_SEGMENT_RENAMES: Mapping[str, tuple[str, ...]] = {
    "downsample_conv": ("downsample", "0"),
    "downsample_bn": ("downsample", "1"),
}

# Per-layer relative-position tables (one per kind of relative bias: tokens,
# image patches) sit inside each Flax layer but in one list per stack in
# PyTorch: {stack}.layers_{i}.X -> {stack}.X_list.{i}.weight.
_PER_LAYER_TABLE_SUFFIX = "_rel_pos_table"

# Leaf names: (collection, flax leaf) -> torch leaf. Other raw `self.param`
# leaves are torch Embedding / Parameter tensors: `c_attn` keeps its name, the
# rest (position tables, type embedding) are `<name>.weight`.
_LEAF_RENAMES: Mapping[tuple[str, str], str] = {
    (PARAMS, "kernel"): "weight",
    (PARAMS, "scale"): "weight",
    (PARAMS, "embedding"): "weight",
    (PARAMS, "bias"): "bias",
    (BATCH_STATS, "mean"): "running_mean",
    (BATCH_STATS, "var"): "running_var",
}
_BARE_PARAMETERS = ("c_attn",)


def flax_path_to_torch_key(collection: str, path: Path) -> str:
  """The canonical (HF/modelscope) PyTorch key of one Flax variable.

  ``("encoder", "layers_0", "self_attn", "q_proj", "kernel")`` in ``params``
  gives ``encoder.layers.0.self_attn.q_proj.weight``; the naming contract is
  documented in ``ofa_jax/model/{transformer,encoder,decoder,layers,
  adapters,resnet}.py``.
  """
  if not path:
    raise ValueError(f"flax_path_to_torch_key: empty path in {collection!r}")
  path = tuple(path)
  for flax_prefix, torch_prefix in _prefix_renames():
    if path[:len(flax_prefix)] == flax_prefix:
      path = torch_prefix + path[len(flax_prefix):]
      break
  leaf = path[-1]
  if (leaf.endswith(_PER_LAYER_TABLE_SUFFIX) and len(path) == 3
      and re.fullmatch(r"layers_\d+", path[1])):
    return f"{path[0]}.{leaf}_list.{path[1].split('_')[1]}.weight"
  parts: list[str] = []
  for seg in path[:-1]:
    if seg in _SEGMENT_RENAMES:
      parts.extend(_SEGMENT_RENAMES[seg])
      continue
    m = re.fullmatch(r"(layers?\d*)_(\d+)", seg)
    parts.extend([m.group(1), m.group(2)] if m else [seg])
  if (collection, leaf) in _LEAF_RENAMES:
    parts.append(_LEAF_RENAMES[(collection, leaf)])
  elif leaf in _BARE_PARAMETERS or collection != PARAMS:
    parts.append(leaf)
  else:
    parts.extend([leaf, "weight"])
  return ".".join(parts)


def _to_flax_layout(value: np.ndarray, flax_leaf: str) -> np.ndarray:
  """PyTorch tensor layout -> Flax layout for one variable."""
  if flax_leaf == "kernel" and value.ndim == 2:  # Linear [out, in] -> [in, out]
    return value.T
  if flax_leaf == "kernel" and value.ndim == 4:  # Conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  return value


def _to_torch_layout(value: np.ndarray, flax_leaf: str) -> np.ndarray:
  if flax_leaf == "kernel" and value.ndim == 2:
    return value.T
  if flax_leaf == "kernel" and value.ndim == 4:  # HWIO -> OIHW
    return value.transpose(3, 2, 0, 1)
  return value


# ---------------------------------------------------------------------------
# Trees.
# ---------------------------------------------------------------------------
def _flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def _unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    for seg in path[:-1]:
      node = node.setdefault(seg, {})
    node[path[-1]] = value
  return out


def _unbox(tree: Any) -> Any:
  """Drops flax partitioning metadata boxes, keeping plain arrays / shapes."""
  try:
    from flax.core import meta  # pylint: disable=g-import-not-at-top
    return meta.unbox(tree)
  except ImportError:  # pragma: no cover - flax is a hard dependency
    return tree


def abstract_variables(config) -> dict[str, Any]:
  """Shapes and dtypes of the model's ``params`` and ``batch_stats``.

  Uses ``jax.eval_shape`` on the model's init, so nothing is allocated.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import transformer  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(
      lambda: transformer.init_variables(config, jax.random.PRNGKey(0)))
  shapes = _unbox(dict(shapes))
  return {c: shapes[c] for c in COLLECTIONS if c in shapes}


# ---------------------------------------------------------------------------
# Conversion.
# ---------------------------------------------------------------------------
def convert_state_dict(
    state_dict: Mapping[str, Any],
    config=None,
    *,
    target: Optional[Mapping[str, Any]] = None,
    ignore_patterns: Iterable[str] = (),
    vocab_size: Optional[int] = None,
) -> tuple[dict[str, Any], str]:
  """A PyTorch OFA state dict -> ``({"params", "batch_stats"}, naming)``.

  Args:
    state_dict: key -> numpy array (or anything ``np.asarray`` takes), fairseq
      or HF/modelscope naming, with or without a ``model.`` prefix.
    config: the ``ofa_jax.model.config.OFAConfig`` to convert to; its variable
      tree is computed with ``abstract_variables``. Not needed with ``target``.
    target: a variable tree (arrays or ``jax.ShapeDtypeStruct``) to fill
      instead, e.g. from ``model.init``.
    ignore_patterns: regexes of further keys to drop on purpose (e.g.
      ``r"^classification_heads\\."``).
    vocab_size: the checkpoint's vocabulary size (default: ``config.vocab_size``).
      When the target's shared embedding has more rows (the padding of
      ``OFAConfig.vocab_pad_multiple``) and the checkpoint has exactly this many,
      the extra rows are zeros: OFA's weights are kept as they are, the padding
      ids are never read, and the model masks their logits.

  Returns the variables as contiguous numpy arrays in the target's dtypes and
  the detected naming ('fairseq' or 'hf'). Raises ConversionError listing every
  unknown key, missing key and shape mismatch.
  """
  if target is None:
    if config is None:
      raise ValueError("convert_state_dict: pass `config` or `target`")
    target = abstract_variables(config)
  if vocab_size is None and config is not None:
    vocab_size = config.vocab_size
  target = _unbox(dict(target))
  source = names.canonicalize(state_dict, ignore_patterns)
  canonical, naming = source.arrays, source.naming

  problems: list[str] = []
  out: dict[Path, np.ndarray] = {}
  used: set[str] = set()
  owner: dict[str, Path] = {}
  for collection in COLLECTIONS:
    for path, leaf in _flatten(target.get(collection, {})).items():
      key = flax_path_to_torch_key(collection, path)
      flax_name = "/".join((collection,) + path)
      if key in owner:
        problems.append(f"internal: Flax variables {owner[key]} and "
                        f"{flax_name} both map to {key!r}")
        continue
      owner[key] = flax_name
      if key not in canonical:
        problems.append(f"missing key {source.source_key(key)!r} (for Flax "
                        f"{flax_name}, shape {tuple(leaf.shape)})")
        continue
      used.add(key)
      value = _to_flax_layout(canonical[key], path[-1])
      if collection == PARAMS and path == EMBEDDING_PATH:
        value = _pad_embedding(value, tuple(leaf.shape), vocab_size)
      if tuple(value.shape) != tuple(leaf.shape):
        problems.append(
            f"shape mismatch for {source.source_key(key)!r}: checkpoint "
            f"{tuple(canonical[key].shape)}"
            f" gives {tuple(value.shape)} in Flax layout, but Flax {flax_name} "
            f"is {tuple(leaf.shape)}")
        continue
      dtype = np.dtype(getattr(leaf, "dtype", np.float32))
      out[(collection,) + path] = np.ascontiguousarray(value, dtype=dtype)
  for key in sorted(set(canonical) - used):
    if key in owner:
      continue
    problems.append(
        f"unknown key {source.source_key(key)!r} (shape "
        f"{tuple(canonical[key].shape)}): the ofa_jax model has no such "
        "variable")
  if problems:
    raise ConversionError(problems, f"convert_state_dict ({naming} naming)")
  return _unflatten(out), naming


def _pad_embedding(value: np.ndarray, shape: tuple[int, ...],
                   vocab_size: Optional[int]) -> np.ndarray:
  """The checkpoint's [vocab_size, d] embedding with zero rows up to `shape`.

  Only a checkpoint of exactly `vocab_size` rows is padded, so that a
  checkpoint of another vocabulary still fails with a shape mismatch.
  """
  rows = value.shape[0]
  if (vocab_size is None or value.ndim != 2 or len(shape) != 2
      or rows != vocab_size or shape[0] <= rows or shape[1] != value.shape[1]):
    return value
  return np.concatenate(
      [value, np.zeros((shape[0] - rows, value.shape[1]), value.dtype)])


def to_state_dict(variables: Mapping[str, Any], naming: str = names.HF,
                  *, with_tied_aliases: bool = True,
                  vocab_size: Optional[int] = None) -> dict[str, np.ndarray]:
  """The reverse map: ofa_jax variables -> a PyTorch state dict (numpy).

  Buffers that OFA recomputes (``IGNORED_BUFFERS``) are not produced.
  vocab_size: keep only this many rows of the shared embedding (drops the
  padding rows of ``OFAConfig.vocab_pad_multiple``, giving OFA's shape).
  """
  variables = _unbox(dict(variables))
  canonical = {}
  for collection in COLLECTIONS:
    for path, value in _flatten(variables.get(collection, {})).items():
      key = flax_path_to_torch_key(collection, path)
      value = np.asarray(value)
      if (collection == PARAMS and path == EMBEDDING_PATH
          and vocab_size is not None):
        if not 0 < vocab_size <= value.shape[0]:
          raise ValueError(f"to_state_dict: vocab_size={vocab_size} but the "
                           f"embedding has {value.shape[0]} rows")
        value = value[:vocab_size]
      canonical[key] = _to_torch_layout(value, path[-1])
  return names.to_naming(canonical, naming, with_tied_aliases=with_tied_aliases)


# ---------------------------------------------------------------------------
# Orbax I/O.
# ---------------------------------------------------------------------------
def save_converted(variables: Mapping[str, Any], out_dir: str,
                   metadata: Mapping[str, Any], *, force: bool = False) -> str:
  """Writes ``out_dir/checkpoint`` (orbax) and ``out_dir/conversion.json``."""
  from ofa_jax import checkpoints  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  ckpt_dir = run_dir.converted_checkpoint(out_dir)
  state = {c: dict(variables[c]) for c in COLLECTIONS if c in variables}
  # Replica-parallel writes off in one process (checkpoints.array_tree_handler).
  checkpoints.save_array_tree(ckpt_dir, state, force=force)
  run_dir.write_json(run_dir.conversion_file(out_dir), dict(metadata))
  return ckpt_dir


def load_converted(path: str, target: Optional[Any] = None) -> dict[str, Any]:
  """Restores ``{"params": ..., "batch_stats": ...}`` written by ``save_converted``.

  ``path`` is the conversion output directory or its ``checkpoint`` subfolder.
  Without ``target`` the arrays come back unboxed, unsharded; pass a tree of
  ``jax.ShapeDtypeStruct`` with shardings (same structure, e.g. from the
  partitioner) to restore each array straight onto its devices.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if run_dir.holds_converted_checkpoint(path):
    path = run_dir.converted_checkpoint(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"load_converted: no converted checkpoint at {path}")
  checkpointer = ocp.StandardCheckpointer()
  try:
    if target is not None:
      target = {c: _unbox(dict(target))[c] for c in COLLECTIONS
                if c in target}
    restored = checkpointer.restore(path, target)
  finally:
    checkpointer.close()
  return {c: restored[c] for c in COLLECTIONS if c in restored}


def load_metadata(out_dir: str) -> dict[str, Any]:
  """The ``conversion.json`` next to a converted checkpoint."""
  path = run_dir.conversion_file(os.path.abspath(out_dir))
  metadata = run_dir.read_json(path)
  if metadata is None:
    raise FileNotFoundError(f"no {METADATA_FILE} at {path}")
  return metadata
