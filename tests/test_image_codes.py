"""Image targets as VQ codes: placeholders in the plan, the frozen VQGAN head,
the offline cache, training and generation on tiny shapes."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import seqio

from ofa_jax import feature_converter as fc_lib
from ofa_jax import features as F
from ofa_jax import models
from ofa_jax import optimizers
from ofa_jax import partitioning
from ofa_jax import plan as plan_lib
from ofa_jax import trainer
from ofa_jax import vocab as vocab_lib
from ofa_jax.decoding import spec as decoding_spec
from ofa_jax.modalities import image_features
from ofa_jax.model.vqgan import VQGANConfig
from ofa_jax.model.vqgan import io as vq_io
from ofa_jax.model.vqgan import model as vq_model
from tasks import demo_world
from test_api import tiny_config

SIDE = 16  # target images: 16 px at f=4 -> 4 x 4 = 16 codes
NUM_CODES = 16
VQ = VQGANConfig(resolution=SIDE, ch=32, ch_mult=(1, 1, 1), num_res_blocks=1,
                 attn_resolutions=(), z_channels=32, embed_dim=32,
                 n_embed=NUM_CODES, quantizer="vq")
LENGTHS = {"inputs": 24, "targets": 20, "images": 1, "target_image": SIDE}
T2I = "what is the complete image? caption: [TEXT:cap] -> [IMAGE:img]"
INFILL = ('what is the complete image of " [IMAGE:img,mask_ratio=0.5] "? -> '
          '[IMAGE:img]')
OPTIONS = dict(image_size=32, target_image_size=SIDE, vq_factor=4)


def _model_config(vocabulary, **overrides):
  return tiny_config(vocabulary).replace(
      target_heads=("target_image",), image_tokenizer=json.dumps(VQ.to_dict()),
      code_image_size=SIDE, code_downsample=4, **overrides)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  vocabulary = vocab_lib.default_vocabulary(num_codes=NUM_CODES)
  config = _model_config(vocabulary)
  counts = {"train": 8, "validation": 4}
  for name, instruction, extra in (("t2i", T2I, {"offline_cache": True}),
                                   ("infill", INFILL, {})):
    plan_lib.register_task(
        f"test_codes_{name}", instruction,
        demo_world.function_source("caption", counts, canvas=32),
        replace=True, vocabulary=vocabulary, model_config=config,
        **OPTIONS, **extra)
  plan_lib.register_mixture("test_codes_mix", [("test_codes_t2i", 1.0),
                                               ("test_codes_infill", 1.0)],
                            replace=True)
  vq_dir = str(tmp_path_factory.mktemp("vq") / "vqgan")
  variables = vq_model.init_variables(VQ, jax.random.key(3))
  vq_io.save_vqgan(vq_dir, VQ, variables)
  model = models.OFAModel(config, vocabulary,
                          target_head_dirs={"target_image": vq_dir})
  return vocabulary, model, vq_dir


def _task_examples(name, split="validation", use_cached=False):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False,
                        use_cached=use_cached)
  return ds


def _model_batch(name, use_cached=False, n=4):
  ds = _task_examples(name, use_cached=use_cached)
  converter = fc_lib.OFAFeatureConverter()
  ds = converter(ds, LENGTHS).batch(n)
  return {k: np.asarray(v) for k, v in next(ds.as_numpy_iterator()).items()}


def test_plan_writes_one_placeholder_code_per_grid_cell(world):
  vocabulary, _, _ = world
  ex = next(_task_examples("test_codes_t2i").as_numpy_iterator())
  n = (SIDE // 4) ** 2
  np.testing.assert_array_equal(ex[F.TARGETS],
                                [vocabulary.code_offset] * n + [vocabulary.eos_id])
  assert list(ex[F.TARGET_KINDS][:n]) == [int(F.TokenKind.CODE)] * n
  assert ex[F.TARGET_LOSS_MASK].tolist() == [1] * (n + 1)  # codes and </s>
  assert ex[image_features.TARGET_IMAGE].shape == (SIDE, SIDE, 3)
  assert ex[image_features.TARGET_IMAGE_MASK].tolist() == [1]


def test_image_target_is_refused_without_its_head_or_with_another_grid(world):
  vocabulary, _, _ = world
  source = demo_world.function_source("caption", {"train": 2}, canvas=32)
  with pytest.raises(ValueError, match="target head 'target_image'"):
    plan_lib.register_task("test_codes_nohead", T2I, source, replace=True,
                           vocabulary=vocabulary,
                           model_config=tiny_config(vocabulary), **OPTIONS)
  with pytest.raises(ValueError, match="code_image_size=16"):
    plan_lib.register_task("test_codes_grid", T2I, source, replace=True,
                           vocabulary=vocabulary,
                           model_config=_model_config(vocabulary),
                           **dict(OPTIONS, target_image_size=32))


def test_codebook_must_match_the_vocabulary(world, tmp_path):
  _, _, vq_dir = world
  vocabulary = vocab_lib.default_vocabulary(num_codes=32)
  with pytest.raises(ValueError, match="16 codes.*32 <code_k>"):
    models.OFAModel(_model_config(vocabulary), vocabulary)
  with pytest.raises(ValueError, match="32"):
    vq_io.load_vqgan(vq_dir, expected_num_codes=32)


def test_on_device_codes_equal_the_offline_cache(world, tmp_path):
  vocabulary, model, vq_dir = world
  head = model.target_heads["target_image"]
  variables = head.load_variables()
  batch = _model_batch("test_codes_t2i")
  tokenized = model.tokenize_targets({"target_image": variables}, batch)
  codes = np.asarray(head.encode(variables,
                                 batch[image_features.TARGET_IMAGE]))
  n = codes.shape[1]
  targets = np.asarray(tokenized[F.DECODER_TARGET_TOKENS])
  np.testing.assert_array_equal(targets[:, :n], codes + vocabulary.code_offset)
  np.testing.assert_array_equal(targets[:, n], vocabulary.eos_id)
  dec_in = np.asarray(tokenized[F.DECODER_INPUT_TOKENS])
  np.testing.assert_array_equal(dec_in[:, 1:n + 1], targets[:, :n])
  assert not np.array_equal(targets, batch[F.DECODER_TARGET_TOKENS])

  from tools import tokenize_images  # pylint: disable=g-import-not-at-top
  cache = str(tmp_path / "cache")
  done = tokenize_images.tokenize("test_codes_mix", vq_dir, cache,
                                  splits=("validation",), batch_size=3)
  assert done == {"test_codes_t2i": {"validation": 4}}  # infill: not cacheable
  seqio.add_global_cache_dirs([cache])
  task = seqio.get_mixture_or_task("test_codes_t2i")
  task._cache_dir = None  # pylint: disable=protected-access
  cached = _model_batch("test_codes_t2i", use_cached=True)
  np.testing.assert_array_equal(cached[F.DECODER_TARGET_TOKENS], targets)
  np.testing.assert_array_equal(cached[F.DECODER_INPUT_TOKENS], dec_in)
  assert cached[image_features.TARGET_IMAGE_MASK].sum() == 0
  # Nothing is left for the train step to encode: the batch passes unchanged.
  again = model.tokenize_targets({"target_image": variables}, cached)
  np.testing.assert_array_equal(again[F.DECODER_TARGET_TOKENS], targets)


@pytest.mark.slow
def test_text_to_image_and_infilling_train_and_generate(world, tmp_path):
  vocabulary, model, vq_dir = world
  model_dir = str(tmp_path / "run")
  # One device: the mesh is not what this test is about (layouts:
  # test_partitioning.py), and saving a checkpoint replicated over the 8 fake
  # devices costs more than the two steps.
  result = trainer.train(
      model=model, model_dir=model_dir, mixture_or_task_name="test_codes_mix",
      task_feature_lengths=LENGTHS, train_steps=2, batch_size=8,
      optimizer=optimizers.adamw(learning_rate=1e-3, total_steps=2),
      partitioner=partitioning.make_partitioner(devices=jax.devices()[:1]),
      checkpoint_period=2, log_period=1, async_checkpoints=False,
      handle_signals=False)
  frozen = result.state.model_state[models.TARGET_HEADS]["target_image"]
  _, saved = vq_io.load_vqgan(vq_dir)
  for a, b in zip(jax.tree.leaves(frozen["params"]),
                  jax.tree.leaves(saved["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # never trained

  variables = {"params": result.state.params, **result.state.model_state}
  # Jitted, one program per decoding spec: both tasks decode the same way on
  # batches of the same shapes, so they share one compilation.
  predict = {}
  render = jax.jit(model.render_codes)
  for name in ("test_codes_t2i", "test_codes_infill"):
    task = seqio.get_mixture_or_task(name)
    spec = task.plan.decoding
    assert spec.kind == "image_codes" and spec.max_len == 16
    if spec.cache_key() not in predict:
      predict[spec.cache_key()] = jax.jit(
          lambda v, b, r, spec=spec: model.predict_batch(v, b, decoding=spec,
                                                         rng=r))
    batch = _model_batch(name)
    tokens = np.asarray(predict[spec.cache_key()](variables, batch,
                                                  jax.random.key(0)))
    codes = tokens[:, :16]
    assert ((codes >= vocabulary.code_offset)
            & (codes < vocabulary.code_offset + NUM_CODES)).all()
    pixels = np.asarray(render(variables, codes))
    assert pixels.shape == (4, SIDE, SIDE, 3) and np.isfinite(pixels).all()


def test_decoding_spec_of_an_image_target_follows_vq_factor(world):
  task = seqio.get_mixture_or_task("test_codes_t2i")
  spec = task.plan.decoding
  assert isinstance(spec, decoding_spec.DecodingSpec)
  assert (spec.max_len, spec.min_len, spec.method) == (16, 16, "sample")
