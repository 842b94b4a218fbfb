"""`python -m ofa_jax.train_vq --gin_file=vq/demo.gin --gin.IMAGE_DIR="'imgs'"
--gin.VQ_DIR="'out'"`: train a VQGAN image tokenizer on a folder of images.

Why: OFA generates images as VQGAN codes, and a tokenizer trained on other
pictures reconstructs a new domain poorly; this trains one on the user's own
images (`ofa_jax.vq_training.loop.train_vqgan`), in the project's conventions.

Flags (as `ofa_jax.train`): `--gin_file` (repeatable), `--gin_bindings`
(repeatable), `--gin.NAME=VALUE`, `--gin_search_paths`, `--verbose`. The gin
files are `gin/vq/base.gin` (defaults; `VQ_PRESET` names the architecture,
`VQ_OVERRIDES` changes its fields), `gin/vq/f8_8192.gin` (OFA's tokenizer) and
`gin/vq/demo.gin` (the demo's). VQ_DIR receives the checkpoint
(`load_vqgan(VQ_DIR)`), the event files (`train/`), the operative
`config.gin` and the log. Exit status: 0 when trained, 1 on a non-finite loss,
2 on a configuration or input error (e.g. an empty image folder).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Mapping, Optional, Sequence

USAGE = ("usage: python -m ofa_jax.train_vq --gin_file=vq/demo.gin "
         "--gin.IMAGE_DIR=\"'images'\" --gin.VQ_DIR=\"'out'\" "
         "[--gin.NAME=VALUE ...] [--gin_bindings=...] [--gin_search_paths=a,b] "
         "[--verbose]")


def vq_config(preset: str, overrides: Optional[Mapping[str, Any]] = None
              ) -> Any:
  """The VQGANConfig preset `preset` with `overrides` (a dict of its fields).

  For gin: `VQ_PRESET = 'demo'`, `VQ_OVERRIDES = {'n_embed': 512}`.
  """
  from ofa_jax.model.vqgan import config as vq_config_lib  # pylint: disable=g-import-not-at-top
  overrides = dict(overrides or {})
  for name in ("ch_mult", "attn_resolutions"):
    if name in overrides:
      overrides[name] = tuple(overrides[name])
  return vq_config_lib.get_config(preset, **overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    print(USAGE)
    return 0
  from ofa_jax import log_setup  # pylint: disable=g-import-not-at-top
  argv = log_setup.configure(argv)
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  try:
    files, bindings, paths, rest = gin_utils.parse_argv(argv)
    if rest:
      raise gin_utils.GinConfigError(f"unknown arguments {rest}\n{USAGE}")
    # A misspelt --gin.NAME= fails here, before JAX starts.
    gin_utils.check_overrides(files, bindings, gin_utils.search_paths(paths))
    gin_utils.parse_gin_flags(files, bindings, paths)
  except (gin_utils.GinConfigError, ValueError) as e:
    print(f"ofa_jax.train_vq: configuration error: {e}", file=sys.stderr)
    return 2

  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import train_metrics  # pylint: disable=g-import-not-at-top
  from ofa_jax.vq_training import loop  # pylint: disable=g-import-not-at-top
  try:
    # Refuse a foreign VQ_DIR before the log file or config.gin go into it.
    loop.check_out_dir(gin.query_parameter("%VQ_DIR"))
    log_setup.log_to_file_in("VQ_DIR", loop.LOG_FILE)
    gin_utils.write_operative_config_to("VQ_DIR")
    # `train_vqgan` is bound by `gin/vq/base.gin`.
    result = gin.get_configurable(loop.train_vqgan)()
  except train_metrics.NonFiniteLossError as e:
    print(f"ofa_jax.train_vq: {e}", file=sys.stderr)
    return 1
  except ValueError as e:
    print(f"ofa_jax.train_vq: {e}", file=sys.stderr)
    return 2
  # Now that every binding was used, the operative config is complete.
  gin_utils.write_operative_config_to("VQ_DIR")
  logging.info("VQGAN trained: %s", json.dumps(result, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
