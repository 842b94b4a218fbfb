r"""Converts a taming-transformers VQGAN checkpoint into a VQGAN directory ofa_jax loads.

Why a tool: OFA's image tokenizer (and taming's released VQGANs) are PyTorch
Lightning ``.ckpt`` files; ofa_jax reads ``ofa_jax.model.vqgan.io``
directories (orbax variables + ``vqgan_config.json``). The training loss's
``loss.*`` keys (discriminator, LPIPS) are skipped and counted; every unknown
key, missing key and shape mismatch is reported by name, and then nothing is
written.

Usage:
  python tools/convert_vqgan_checkpoint.py IN OUT_DIR --config f8_8192 \
      [--override n_embed=16384] [--allow_pickle] [--force]

IN is a ``.ckpt`` (its ``state_dict`` entry is used), a bare state dict
(``.pt`` / ``.pth`` / ``.bin``) or ``.safetensors``. Loading uses
``torch.load(weights_only=True)``; Lightning checkpoints that also pickle
their hyper-parameters are refused by that, so pass ``--allow_pickle`` only
for files you trust (full unpickling runs code).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, Sequence

# Run as a script, the repository root is not on the path; `tools` needs it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from tools.convert_ofa_checkpoint import _sha256 as sha256_of_file
from tools.convert_ofa_checkpoint import load_torch_state_dict, parse_overrides
# pylint: enable=g-import-not-at-top,wrong-import-position


def convert(in_path: str, out_dir: str, config_name: str, *,
            overrides: Mapping[str, Any] | None = None,
            allow_pickle: bool = False, force: bool = False) -> dict[str, Any]:
  """The whole tool as a function; returns the metadata it wrote."""
  from ofa_jax.model.vqgan import config as config_lib  # pylint: disable=g-import-not-at-top
  from ofa_jax.model.vqgan import conversion  # pylint: disable=g-import-not-at-top
  from ofa_jax.model.vqgan import io  # pylint: disable=g-import-not-at-top
  if os.path.isfile(os.path.join(out_dir, io.CONFIG_FILE)) and not force:
    raise FileExistsError(f"{out_dir} already holds a VQGAN; pass --force to "
                          "replace it")
  overrides = dict(overrides or {})
  config = config_lib.get_config(config_name, **overrides)
  state_dict = load_torch_state_dict(in_path, allow_pickle=allow_pickle)
  variables, report = conversion.convert_state_dict(state_dict, config)
  metadata = {
      "config_name": config_name,
      "config_overrides": overrides,
      "source": os.path.abspath(in_path),
      "source_sha256": sha256_of_file(in_path),
      **report,
  }
  io.save_vqgan(out_dir, config, variables, metadata=metadata)
  return metadata


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("input", help=".ckpt / .pt / .pth / .bin / .safetensors")
  parser.add_argument("out_dir")
  parser.add_argument("--config", required=True,
                      help="VQGAN preset: f8_8192, f16_16384, demo")
  parser.add_argument("--override", action="append", default=[],
                      metavar="NAME=VALUE", help="VQGANConfig field override")
  parser.add_argument("--allow_pickle", action="store_true",
                      help="full torch.load for trusted Lightning checkpoints")
  parser.add_argument("--force", action="store_true",
                      help="replace a VQGAN already in OUT_DIR")
  args = parser.parse_args(argv)
  try:
    metadata = convert(args.input, args.out_dir, args.config,
                       overrides=parse_overrides(args.override),
                       allow_pickle=args.allow_pickle, force=args.force)
  except (ValueError, FileNotFoundError,
          FileExistsError) as e:  # ConversionError included
    print(f"convert_vqgan_checkpoint: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out_dir} ({metadata['num_converted']} variables from "
        f"{metadata['num_source_keys']} source keys; skipped "
        f"{metadata['num_skipped']} keys under "
        f"{', '.join(metadata['skipped_prefixes'])})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
