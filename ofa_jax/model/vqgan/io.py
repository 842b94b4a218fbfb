"""Saving and loading a VQGAN: its variables (orbax) and its config (JSON).

Why a directory with both: whoever loads the tokenizer (the OFA trainer, the
image generator, the converter's user) must rebuild the exact network with no
other argument, and must learn early when the tokenizer does not fit the
vocabulary it is paired with (``expected_num_codes``).

Layout of ``directory``::

    vqgan_config.json    VQGANConfig.to_dict()
    vqgan_metadata.json  optional free-form facts (source, training steps)
    variables/           orbax pytree checkpoint: {"params"[, "vq_ema"]}

Atomicity: ``vqgan_config.json`` is the commit mark. A save writes the new
variables into a hidden staging folder first, then removes the old config (the
directory stops loading), swaps the variables folder in by rename and writes
the config last (atomically). A crash therefore leaves either the old
checkpoint, a directory that refuses to load (no config, named in the error),
or the new checkpoint; never a mix that loads. Other files in ``directory``
(a training run's logs) are left alone; stray ``.variables.*`` folders of a
crashed save are ignored by the loader.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from ofa_jax import run_dir
from ofa_jax.model.vqgan.config import VQGANConfig
from ofa_jax.model.vqgan.model import abstract_variables

CONFIG_FILE = "vqgan_config.json"
METADATA_FILE = "vqgan_metadata.json"
VARIABLES_DIR = "variables"


def _flat_shapes(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path):
          tuple(np.shape(leaf)) for path, leaf in flat}


def check_variables(config: VQGANConfig, variables: Mapping[str, Any],
                    where: str) -> None:
  """Raises ValueError naming every variable that is missing, unexpected or
  mis-shaped for ``config``."""
  expected = _flat_shapes(abstract_variables(config))
  got = _flat_shapes(variables)
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  common = sorted(set(got) & set(expected))
  problems = [f"missing {k} {expected[k]}" for k in missing]
  problems += [f"unexpected {k} {got[k]}" for k in unexpected]
  problems += [f"{k}: shape {got[k]}, the config needs {expected[k]}"
               for k in common if got[k] != expected[k]]
  if problems:
    raise ValueError(f"{where}: the variables do not fit the VQGANConfig "
                     f"(n_embed={config.n_embed}, quantizer="
                     f"{config.quantizer!r}): " + "; ".join(problems))


def save_vqgan(directory: str, config: VQGANConfig,
               variables: Mapping[str, Any], *, metadata: Optional[Mapping[str, Any]] = None) -> None:
  """Writes ``variables`` (checked against ``config``) and ``config`` to
  ``directory`` atomically, replacing an earlier VQGAN saved there."""
  from ofa_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if not isinstance(config, VQGANConfig):
    raise ValueError(f"save_vqgan: config must be a VQGANConfig, got "
                     f"{type(config).__name__}")
  variables = nn.meta.unbox(dict(variables))
  check_variables(config, variables, f"save_vqgan({directory})")
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise ValueError(f"save_vqgan: {directory} exists and is not a directory")
  os.makedirs(directory, exist_ok=True)
  tag = uuid.uuid4().hex[:8]
  staging = os.path.join(directory, f".{VARIABLES_DIR}.tmp-{tag}")
  retired = os.path.join(directory, f".{VARIABLES_DIR}.old-{tag}")
  final = os.path.join(directory, VARIABLES_DIR)
  config_path = os.path.join(directory, CONFIG_FILE)
  metadata_path = os.path.join(directory, METADATA_FILE)
  try:
    # Replica-parallel writes off in one process (checkpoints.array_tree_handler).
    checkpoints.save_array_tree(staging,
                                {k: dict(v) for k, v in variables.items()})
    # From here until the config is back, the directory does not load.
    for stale in (config_path, metadata_path):
      if os.path.exists(stale):
        os.remove(stale)
    if os.path.exists(final):
      os.rename(final, retired)
    os.rename(staging, final)
    if metadata is not None:
      run_dir.write_json(metadata_path, dict(metadata))
    run_dir.write_json(config_path, config.to_dict())
  finally:
    for leftover in (staging, retired):
      if os.path.exists(leftover):
        shutil.rmtree(leftover, ignore_errors=True)


def load_config(directory: str) -> VQGANConfig:
  """The ``VQGANConfig`` saved in ``directory``."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"load_vqgan: no VQGAN checkpoint directory at "
                            f"{directory}")
  path = os.path.join(directory, CONFIG_FILE)
  payload = run_dir.read_json(path)
  if payload is None:
    raise FileNotFoundError(f"load_vqgan: no {CONFIG_FILE} at {path}")
  try:
    return VQGANConfig.from_dict(payload)
  except (TypeError, ValueError) as e:
    raise ValueError(f"load_vqgan: {path}: {e}") from e


def load_vqgan(directory: str, *, expected_num_codes: Optional[int] = None
               ) -> tuple[VQGANConfig, dict[str, Any]]:
  """``(config, variables)`` saved by ``save_vqgan``.

  ``expected_num_codes``: the image-code count of the vocabulary the VQGAN
  will be paired with; a different ``n_embed`` raises ValueError (before any
  array is read).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = load_config(directory)
  if expected_num_codes is not None and expected_num_codes != config.n_embed:
    raise ValueError(
        f"load_vqgan({directory}): the VQGAN has n_embed={config.n_embed} "
        f"codes but the vocabulary expects {expected_num_codes} image codes")
  path = os.path.join(os.path.abspath(directory), VARIABLES_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"load_vqgan: no {VARIABLES_DIR}/ checkpoint at "
                            f"{path}")
  checkpointer = ocp.StandardCheckpointer()
  try:
    variables = dict(checkpointer.restore(path))
  finally:
    checkpointer.close()
  check_variables(config, variables, f"load_vqgan({directory})")
  return config, variables


def load_metadata(directory: str) -> dict[str, Any]:
  """The metadata given to ``save_vqgan`` ({} when none was)."""
  return run_dir.read_json(
      os.path.join(os.path.abspath(directory), METADATA_FILE)) or {}
