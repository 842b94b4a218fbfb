r"""Converts an OFA PyTorch checkpoint into an orbax checkpoint that ofa_jax loads.

Why a tool: OFA's released weights are fairseq ``.pt`` files (``{"model":
state_dict, "args"/"cfg": ...}``) or HF / modelscope ``pytorch_model.bin``
files; ofa_jax reads orbax. Every unknown key, missing key and shape mismatch
is reported (all at once) with its name, and the conversion stops.

Usage:
  python tools/convert_ofa_checkpoint.py IN OUT_DIR --size tiny \
      [--vocab_dir DIR] [--override vocab_size=59457] [--ignore REGEX] \
      [--allow_pickle] [--force]

Writes a model directory (its layout is ``ofa_jax.run_dir``'s):
``OUT_DIR/checkpoint`` (orbax: ``{"params", "batch_stats"}``, read it with
``ofa_jax.checkpoint_conversion.load_converted``), ``OUT_DIR/conversion.json``
(config name and overrides, source, detected naming), ``OUT_DIR/model_config.json``
(the network and vocabulary, so that ``Generalist.load(OUT_DIR)`` needs no
arguments) and, with ``--vocab_dir``, OFA's BPE files (``encoder.json``,
``vocab.bpe``, ``dict.txt``) next to them.

The shared embedding gets zero rows up to a multiple of 128 (as gin runs
pad it: ``OFAConfig.vocab_pad_multiple``); OFA's rows are unchanged and the
padding ids are never produced. ``--override vocab_pad_multiple=1`` keeps
OFA's exact shape.

Loading uses ``torch.load(weights_only=True)``. Released fairseq files also
pickle their training arguments, which that refuses; pass ``--allow_pickle``
only for files you trust (full unpickling runs code).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from ofa_jax import run_dir

BPE_FILES = run_dir.BPE_FILES
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
  _refuse_to_overwrite(out_dir, force)
  state_dict = load_torch_state_dict(in_path, allow_pickle=allow_pickle)
  return write_model_dir(
      state_dict, out_dir, size, overrides=overrides, vocab_dir=vocab_dir,
      ignore=ignore, force=force,
      source={"source": os.path.abspath(in_path),
              "source_sha256": _sha256(in_path)})


def _refuse_to_overwrite(out_dir: str, force: bool) -> None:
  if run_dir.holds_converted_checkpoint(out_dir) and not force:
    raise FileExistsError(
        f"{out_dir} already holds a converted checkpoint; pass --force")


def write_model_dir(state_dict: Mapping[str, Any], out_dir: str, size: str, *,
                    overrides: Mapping[str, Any] | None = None,
                    vocab_dir: str | None = None, ignore: Sequence[str] = (),
                    force: bool = False,
                    source: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Converts a loaded state dict into a model directory `Generalist.load` reads.

  `source` is recorded in conversion.json (where the weights came from).
  """
  from ofa_jax import checkpoint_conversion as cc  # pylint: disable=g-import-not-at-top
  from ofa_jax.api import model_spec  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  _refuse_to_overwrite(out_dir, force)
  overrides = dict(overrides or {})
  # Padded as a gin run's model is (gin/models/common.gin), so that training
  # starts from the converted weights; `--override vocab_pad_multiple=1` keeps
  # OFA's exact embedding shape.
  config = config_lib.get_config(
      size, **{"vocab_pad_multiple": config_lib.DEFAULT_VOCAB_PAD_MULTIPLE,
               **overrides})
  variables, naming = cc.convert_state_dict(state_dict, config,
                                            ignore_patterns=ignore)
  metadata = {
      "config_name": size,
      "config_overrides": overrides,
      **dict(source or {}),
      "source_naming": naming,
      "ignored_patterns": list(ignore),
      "num_source_keys": len(state_dict),
  }
  if vocab_dir:
    try:
      metadata["vocab_files"] = run_dir.copy_bpe_files(vocab_dir, out_dir)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"--vocab_dir {e}") from None
  cc.save_converted(variables, out_dir, metadata, force=force)
  # OFA's BPE vocabulary when its files came along; else the bundled default.
  bpe = {"fn": "ofa_bpe_vocabulary", "num_codes": config.num_codes,
         "num_bins": config.num_bins}
  model_spec.save(out_dir, config, vocab_spec=bpe if vocab_dir else None)
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
