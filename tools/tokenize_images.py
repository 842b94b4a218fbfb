"""Tokenize the target images of tasks offline: a seqio cache of VQ code ids.

    python tools/tokenize_images.py TASK_OR_MIXTURE --vqgan VQGAN_DIR \
        --cache_dir CACHE [--register my_tasks:register] [--splits train,validation]

then train with the cache (the other tasks of a mixture stay on the fly):

    python -m ofa_jax.train ... --gin.USE_CACHED_TASKS=True --gin.CACHE_DIRS="['CACHE']"

Why: tokenizing a target image costs a VQGAN encoder pass (the f8_8192 encoder
is about as expensive as a small generalist's step per image); done inside the
train step (the default when no cache exists) it is paid again every epoch.
Offline it is paid once. Both ways give the same codes (the same jitted
`ImageCodeHead.encode`; `tests/test_image_codes.py` checks it).

Every task of the mixture registered with `offline_cache=True` is cached; the
VQGAN's codebook must match the task vocabulary's `<code_k>` range and its
downsampling factor the task's `vq_factor`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


def _tasks(name: str) -> list:
  import seqio  # pylint: disable=g-import-not-at-top
  provider = seqio.get_mixture_or_task(name)
  tasks = list(getattr(provider, "tasks", None) or [provider])
  cacheable = [t for t in tasks if t.supports_caching]
  if not cacheable:
    raise SystemExit(f"{name!r}: no task registered with offline_cache=True "
                     f"(tasks: {[t.name for t in tasks]})")
  return cacheable


def tokenize(name: str, vqgan_dir: str, cache_dir: str, *,
             splits: Sequence[str] = ("train", "validation"),
             batch_size: int = 16, max_examples: Optional[int] = None,
             overwrite: bool = False) -> dict[str, dict[str, int]]:
  """Caches every `offline_cache` task of `name`; {task: {split: examples}}."""
  import jax  # pylint: disable=g-import-not-at-top
  from ofa_jax import offline_cache  # pylint: disable=g-import-not-at-top
  from ofa_jax.model.image_code_head import ImageCodeHead  # pylint: disable=g-import-not-at-top
  done = {}
  for task in _tasks(name):
    plan = task.plan
    side = int(plan.options.get("target_image_size", 0))
    if not side:
      raise SystemExit(f"task {task.name!r}: set the option target_image_size")
    head, variables = ImageCodeHead.from_directory(vqgan_dir, side)
    factor = int(plan.options.get("vq_factor", 8))
    if factor != head.vq_config.downsample_factor:
      raise SystemExit(
          f"task {task.name!r} has vq_factor={factor} but the VQGAN at "
          f"{vqgan_dir} downsamples by {head.vq_config.downsample_factor}")
    head.check_layout(plan.vocab)
    transform = jax.jit(functools.partial(
        head.tokenize_task_features, variables,
        code_offset=int(plan.vocab.code_offset)))
    done[task.name] = offline_cache.write_task_cache(
        task, cache_dir, transform, head.TASK_FEATURES, splits=splits,
        batch_size=batch_size, max_examples=max_examples, overwrite=overwrite)
    logging.info("%s: %s examples -> %s", task.name, ", ".join(
        f"{s} {n}" for s, n in done[task.name].items()),
                 offline_cache.task_cache_dir(cache_dir, task.name))
  return done


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("name", help="a registered task or mixture")
  parser.add_argument("--vqgan", required=True,
                      help="VQGAN directory (ofa_jax.train_vq or "
                      "tools/convert_vqgan_checkpoint.py)")
  parser.add_argument("--cache_dir", required=True)
  parser.add_argument("--splits", default="train,validation")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--max_examples", type=int, default=None)
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--register", action="append", default=[],
                      help="MODULE:FUNCTION that registers the tasks; repeatable")
  args = parser.parse_args(argv)
  from ofa_jax import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tensorflow()
  for spec in args.register:
    module, sep, fn = spec.partition(":")
    if not sep:
      parser.error(f"--register expects MODULE:FUNCTION, got {spec!r}")
    getattr(importlib.import_module(module), fn)()
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  tokenize(args.name, args.vqgan, args.cache_dir,
           splits=[s for s in args.splits.split(",") if s],
           batch_size=args.batch_size, max_examples=args.max_examples,
           overwrite=args.overwrite)
  return 0


if __name__ == "__main__":
  sys.exit(main())
