"""A tiny text-to-image / infilling world with a saved checkpoint, for tests.

Why shared: generating pictures needs a model with a VQGAN head, its VQGAN
directory, image-target tasks on the same code grid and a checkpoint that
carries the head (as a trained run's does). Building that once per test module
keeps the tests of the runner, the API, the CLI and the evaluator on one setup.
The model holds random weights drawn on the host (step 0, no init compiled):
random weights still decode valid codes, and the plumbing is what is tested.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import numpy as np

from ofa_jax import api
from ofa_jax import checkpoints
from ofa_jax import models
from ofa_jax import plan as plan_lib
from ofa_jax import vocab as vocab_lib
from ofa_jax.api import model_spec as api_config
from ofa_jax.model import testing
from ofa_jax.model.vqgan import io as vq_io
from ofa_jax.model.vqgan import model as vq_model
from tasks import demo_world
from test_api import tiny_config
from test_image_codes import INFILL, LENGTHS, NUM_CODES, OPTIONS, SIDE, T2I, VQ

GRID = (SIDE // OPTIONS["vq_factor"]) ** 2  # codes of one picture
T2I_TASK = "test_gen_t2i"
INFILL_TASK = "test_gen_infill"
N_VALIDATION = 3  # with batch size 2 the last batch is padded


def model_config(vocabulary: Any):
  """The tiny network with the VQGAN head of `VQ` on SIDE px targets."""
  return tiny_config(vocabulary).replace(
      target_heads=("target_image",), image_tokenizer=json.dumps(VQ.to_dict()),
      code_image_size=SIDE, code_downsample=OPTIONS["vq_factor"])


def pixel_error(targets: Sequence[Any], predictions: Sequence[Any]) -> dict:
  """An image metric: mean absolute difference of uint8 pictures (0-255)."""
  errors = [np.abs(np.asarray(t, np.float64) - np.asarray(p, np.float64)).mean()
            for t, p in zip(targets, predictions)]
  return {"pixel_mae": float(np.mean(errors))}


@dataclasses.dataclass(frozen=True)
class ImageWorld:
  vocabulary: Any
  model: models.OFAModel
  vq_dir: str
  model_dir: str
  variables: dict  # {"params", "batch_stats", "target_heads"}


def register_tasks(vocabulary: Any, config: Any) -> None:
  """The two picture tasks (with `pixel_error`) on demo captions."""
  counts = {"train": 2, "validation": N_VALIDATION, "test": N_VALIDATION}
  for name, instruction in ((T2I_TASK, T2I), (INFILL_TASK, INFILL)):
    plan_lib.register_task(
        name, instruction, demo_world.function_source("caption", counts,
                                                       canvas=32),
        metric_fns=[pixel_error], replace=True, vocabulary=vocabulary,
        model_config=config, **OPTIONS)


def build(root: str) -> ImageWorld:
  """Registers the tasks, saves a VQGAN and a step-0 checkpoint under `root`."""
  vocabulary = vocab_lib.default_vocabulary(num_codes=NUM_CODES)
  config = model_config(vocabulary)
  register_tasks(vocabulary, config)
  vq_dir = os.path.join(root, "vqgan")
  vq_io.save_vqgan(vq_dir, VQ, vq_model.init_variables(VQ, jax.random.key(3)))
  model = models.OFAModel(config, vocabulary,
                          target_head_dirs={"target_image": vq_dir})
  batch = api_config.dummy_model_batch(config, OPTIONS)
  # Random weights drawn on the host: compiling the init costs as much as a
  # train step, and any well-scaled weights serve.
  variables = testing.random_variables(config, batch)
  variables = {**variables, **model.frozen_variables()}  # the trained VQGAN
  model_dir = os.path.join(root, "model")
  state = {"step": np.zeros((), np.int32), "params": variables["params"],
           "model_state": {k: v for k, v in variables.items()
                           if k != "params"}}
  mgr = checkpoints.CheckpointManager(model_dir, async_save=False)
  mgr.save(0, state, {}, {}, force=True)
  mgr.close()
  api.save_model_config(model_dir, config, vocabulary=vocabulary,
                        task_options=OPTIONS)
  return ImageWorld(vocabulary=vocabulary, model=model, vq_dir=vq_dir,
                    model_dir=model_dir, variables=variables)


def to_uint8(pixels: Any) -> np.ndarray:
  """Pixels in [-1, 1] -> uint8, written out here as the reference rule."""
  return np.clip(np.round((np.asarray(pixels, np.float32) + 1.0) * 127.5),
                 0, 255).astype(np.uint8)
