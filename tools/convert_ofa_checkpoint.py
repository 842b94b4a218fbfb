r"""Converts an OFA PyTorch checkpoint into an orbax checkpoint that ofa_jax loads.

Why a tool: OFA's released weights are fairseq ``.pt`` files (``{"model":
state_dict, "args"/"cfg": ...}``) or HF / modelscope ``pytorch_model.bin``
files; ofa_jax reads orbax. Every unknown key, missing key and shape mismatch
is reported (all at once) with its name, and the conversion stops.

Usage:
  python tools/convert_ofa_checkpoint.py IN OUT_DIR --size tiny \
      [--vocab_dir DIR] [--override vocab_size=59457] [--ignore REGEX] \
      [--allow_pickle] [--force]

Writes ``OUT_DIR/checkpoint`` (orbax: ``{"params", "batch_stats"}``, read it
with ``ofa_jax.checkpoint_conversion.load_converted``), ``OUT_DIR/conversion.json``
(config name and overrides, source, detected naming) and, with ``--vocab_dir``,
copies OFA's BPE files (``encoder.json``, ``vocab.bpe``, ``dict.txt``) next to it.

Loading uses ``torch.load(weights_only=True)``. Released fairseq files also
pickle their training arguments, which that refuses; pass ``--allow_pickle``
only for files you trust (full unpickling runs code).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import sys
from typing import Any, Mapping, Sequence

import numpy as np

BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")
_STATE_DICT_KEYS = ("model", "state_dict", "module")


def _tensor_to_numpy(value) -> Any:
  import torch  # pylint: disable=g-import-not-at-top
  if isinstance(value, torch.Tensor):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # fp16 / bf16 checkpoints -> float32
    return value.numpy()
  return value


def extract_state_dict(obj: Any, source: str) -> dict[str, Any]:
  """The tensor dict inside a loaded checkpoint object."""
  if isinstance(obj, Mapping):
    for key in _STATE_DICT_KEYS:
      if isinstance(obj.get(key), Mapping):
        return extract_state_dict(obj[key], f"{source}[{key!r}]")
    non_arrays = [k for k, v in obj.items()
                  if not hasattr(v, "shape") or isinstance(v, Mapping)]
    if not non_arrays:
      return dict(obj)
    raise ValueError(
        f"{source}: not a state dict; entries without a shape: "
        f"{non_arrays[:5]} (expected a tensor dict, or one under "
        f"{list(_STATE_DICT_KEYS)})")
  raise ValueError(f"{source}: expected a dict, got {type(obj).__name__}")


def load_torch_state_dict(path: str, *, allow_pickle: bool = False
                          ) -> dict[str, np.ndarray]:
  """Reads a ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` file on the CPU."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return dict(load_file(path))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "reading PyTorch checkpoints needs torch: pip install -e '.[parity]'"
    ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as e:  # pylint: disable=broad-except
    if allow_pickle:
      raise
    raise ValueError(
        f"{path}: torch.load(weights_only=True) refused the file ({e}). "
        "fairseq checkpoints also pickle their training arguments; if you trust "
        "this file, rerun with --allow_pickle") from e
  return {k: _tensor_to_numpy(v)
          for k, v in extract_state_dict(obj, path).items()}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """``["vocab_size=59457", "dtype=bfloat16"]`` -> dict (Python literals)."""
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--override {item!r}: expected NAME=VALUE")
    name, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw  # plain strings need no quotes
    out[name.strip()] = value
  return out


def copy_vocab(vocab_dir: str, out_dir: str) -> list[str]:
  """Copies OFA's BPE files; all three must be there."""
  missing = [f for f in BPE_FILES
             if not os.path.isfile(os.path.join(vocab_dir, f))]
  if missing:
    raise FileNotFoundError(
        f"--vocab_dir {vocab_dir}: missing {missing} (OFA's BPE needs "
        f"{list(BPE_FILES)})")
  for f in BPE_FILES:
    shutil.copyfile(os.path.join(vocab_dir, f), os.path.join(out_dir, f))
  return list(BPE_FILES)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def convert(in_path: str, out_dir: str, size: str, *,
            overrides: Mapping[str, Any] | None = None,
            vocab_dir: str | None = None, ignore: Sequence[str] = (),
            allow_pickle: bool = False, force: bool = False) -> dict[str, Any]:
  """The whole tool as a function; returns the metadata it wrote."""
  from ofa_jax import checkpoint_conversion as cc  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  overrides = dict(overrides or {})
  config = config_lib.get_config(size, **overrides)
  if (os.path.exists(os.path.join(out_dir, cc.CHECKPOINT_SUBDIR))
      and not force):
    raise FileExistsError(
        f"{out_dir} already holds a converted checkpoint; pass --force")
  state_dict = load_torch_state_dict(in_path, allow_pickle=allow_pickle)
  variables, naming = cc.convert_state_dict(state_dict, config,
                                            ignore_patterns=ignore)
  metadata = {
      "config_name": size,
      "config_overrides": overrides,
      "source": os.path.abspath(in_path),
      "source_sha256": _sha256(in_path),
      "source_naming": naming,
      "ignored_patterns": list(ignore),
      "num_source_keys": len(state_dict),
  }
  os.makedirs(out_dir, exist_ok=True)
  if vocab_dir:
    metadata["vocab_files"] = copy_vocab(vocab_dir, out_dir)
  cc.save_converted(variables, out_dir, metadata, force=force)
  return metadata


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("input", help=".pt / .pth / .bin / .safetensors file")
  parser.add_argument("out_dir")
  parser.add_argument("--size", required=True,
                      help="ofa_jax preset: tiny, medium, base, large, huge")
  parser.add_argument("--vocab_dir", default=None,
                      help="folder with OFA's encoder.json, vocab.bpe, dict.txt")
  parser.add_argument("--override", action="append", default=[],
                      metavar="NAME=VALUE", help="OFAConfig field override")
  parser.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                      help="drop checkpoint keys matching REGEX on purpose")
  parser.add_argument("--allow_pickle", action="store_true",
                      help="full torch.load for trusted fairseq .pt files")
  parser.add_argument("--force", action="store_true",
                      help="overwrite an existing conversion in OUT_DIR")
  args = parser.parse_args(argv)
  from ofa_jax.checkpoint_conversion_names import ConversionError  # pylint: disable=g-import-not-at-top
  try:
    metadata = convert(args.input, args.out_dir, args.size,
                       overrides=parse_overrides(args.override),
                       vocab_dir=args.vocab_dir, ignore=args.ignore,
                       allow_pickle=args.allow_pickle, force=args.force)
  except (ConversionError, ValueError, FileNotFoundError,
          FileExistsError) as e:
    print(f"convert_ofa_checkpoint: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out_dir} ({metadata['source_naming']} naming, "
        f"{metadata['num_source_keys']} source keys)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
