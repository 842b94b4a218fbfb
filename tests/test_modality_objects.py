"""One object per modality: a modality added from tests/ trains end to end, and a
stream no model piece consumes is refused at registration and by the trainer."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from ofa_jax import features as F
from ofa_jax import models
from ofa_jax import modalities
from ofa_jax import plan
from ofa_jax import vocab as vocab_lib
from ofa_jax.feature_converter import OFAFeatureConverter
from ofa_jax.model import config as config_lib
from ofa_jax.model import registry as model_registry
from ofa_jax.plan import checks

LENGTHS = {"inputs": 16, "targets": 8, "toy": 2}


@pytest.fixture(scope="module")
def vocab():
  return vocab_lib.default_vocabulary(num_codes=0, num_bins=10)


@pytest.fixture
def toy():
  """The TOY modality and its adapter, one registry line each."""
  modalities.register("TOY", "tests.toy_modality:TOY")
  model_registry.register_adapter("toy", "tests.toy_modality:ToyAdapter")
  names = []
  yield names
  for name in names:
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)
  modalities.remove("TOY")
  model_registry.remove_adapter("toy")


def _config(vocab, **kw):
  return config_lib.get_config(
      "demo", vocab_size=vocab.vocab_size, num_codes=0, num_bins=10, d_model=32,
      ffn_dim=64, attention_heads=2, resnet_width=4, max_source_positions=64,
      max_target_positions=32, code_image_size=16, dropout=0.0,
      num_type_embeddings=3, **kw)


def _source(fields):
  def fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(fields)
  return seqio.FunctionDataSource(fn, splits=("train",))


def _batch(task, converter):
  ds = task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0)
  ds = converter(ds, LENGTHS).batch(4)
  return next(ds.as_numpy_iterator())


@pytest.mark.slow
def test_toy_modality_from_tests_registers_and_trains(toy, vocab):
  assert "TOY" in modalities.names()
  # The answer is the sign of the first toy number: only the adapter sees it.
  rs = np.random.RandomState(0)
  values = rs.normal(size=(4, 2, 3)).astype(np.float32)
  answers = ["yes" if v[0, 0] > 0 else "no" for v in values]
  config = _config(vocab, encoder_adapters=("toy",))
  toy.append("toy_task")
  task = plan.register_task(
      "toy_task", "[TOY:x,frames=2] is it positive? -> [TEXT:y]",
      _source({"x": values, "y": answers}), vocabulary=vocab,
      model_config=config, toy_dim=3)
  converter = OFAFeatureConverter(pack=False)
  batch = _batch(task, converter)
  assert batch["toy"].shape == (4, 2, 3)
  np.testing.assert_allclose(batch["toy"], values)
  np.testing.assert_array_equal(batch["toy_mask"], np.ones((4, 2)))
  # The TOY slot comes first: no text token before it, slot rank 0.
  np.testing.assert_array_equal(batch["toy_text_offset"], np.zeros((4, 1)))
  assert "images" not in batch or batch["images"].shape[1] == 0

  model = models.OFAModel(config)
  variables = model.get_initial_variables(jax.random.key(0), batch)
  params = variables["params"]
  assert "toy" in params["encoder"], sorted(params["encoder"])
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss(p):
    value, _ = model.loss_fn(p, batch, None, label_smoothing=0.0)
    return value

  grad_fn = jax.jit(jax.value_and_grad(loss))
  first, grads = grad_fn(params)
  proj = jax.tree_util.tree_leaves(grads["encoder"]["toy"])
  assert any(float(np.abs(np.asarray(g)).max()) > 0 for g in proj)
  value = first
  for _ in range(5):
    value, grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  value, _ = grad_fn(params)
  assert float(value) < float(first)


def test_audio_input_without_an_audio_adapter_fails_at_registration(vocab):
  src = _source({"wav": np.zeros((1, 1600), np.float32), "text": ["hi"]})
  config = _config(vocab)  # encoder_adapters=("images",)
  with pytest.raises(ValueError) as info:
    plan.register_task("t_audio_refused", "[AUDIO:wav] what is said? -> "
                       "[TEXT:text]", src, vocabulary=vocab, model_config=config)
  message = str(info.value)
  assert "t_audio_refused" in message and "[AUDIO:wav]" in message
  assert "encoder adapter 'audio'" in message and "encoder_adapters" in message
  assert "t_audio_refused" not in seqio.TaskRegistry.names()
  # Without a model config, the registry itself has no audio adapter.
  with pytest.raises(ValueError, match=r"\[AUDIO:wav\].*not in the model registry"):
    plan.register_task("t_audio_refused", "[AUDIO:wav] what is said? -> "
                       "[TEXT:text]", src, vocabulary=vocab)


def test_data_only_tasks_register_but_the_trainer_check_refuses_them(vocab):
  src = _source({"wav": np.zeros((1, 1600), np.float32), "text": ["hi"]})
  task = plan.register_task("t_audio_data_only", "[AUDIO:wav] what? -> "
                            "[TEXT:text]", src, vocabulary=vocab, replace=True,
                            data_only=True)
  try:
    assert task.plan.data_only
    with pytest.raises(ValueError, match="data_only=True.*encoder adapter 'audio'"):
      checks.check_task_for_model(task, _config(vocab))
  finally:
    seqio.TaskRegistry.remove("t_audio_data_only")


def test_trainer_check_names_a_missing_image_adapter_and_a_missing_head(vocab):
  src = _source({"img": [b""], "text": ["hi"]})
  task = plan.register_task("t_image_caption", "[IMAGE:img] what? -> [TEXT:text]",
                            src, vocabulary=vocab, replace=True)
  try:
    checks.check_task_for_model(task, _config(vocab))  # has "images"
    with pytest.raises(ValueError, match=r"\[IMAGE:img\] needs the encoder "
                       r"adapter 'images'.*encoder_adapters=\(\)"):
      checks.check_task_for_model(task, _config(vocab, encoder_adapters=()))
  finally:
    seqio.TaskRegistry.remove("t_image_caption")
  with pytest.raises(ValueError, match=r"\[IMAGE:img\] needs the target head "
                     r"'target_image'"):
    plan.register_task("t_image_gen", "[TEXT:text] -> [IMAGE:img]", src,
                       vocabulary=vocab, model_config=_config(vocab))


@pytest.mark.slow
def test_a_missing_length_key_means_the_stream_is_absent(vocab):
  src = _source({"a": ["one"], "b": ["two"]})
  task = plan.register_task("t_lengths", "[TEXT:a] -> [TEXT:b]", src,
                            vocabulary=vocab, replace=True)
  try:
    lengths = {"inputs": 8, "targets": 8}
    ds = task.get_dataset(lengths, split="train", shuffle=False, seed=0)
    (row,) = list(OFAFeatureConverter()(ds, lengths).as_numpy_iterator())
    for stream in modalities.streams():
      if stream.length == stream.name:
        assert row[stream.name].shape[0] == 0, stream.name
    assert row[F.ENCODER_INPUT_TOKENS].shape == (8,)
  finally:
    seqio.TaskRegistry.remove("t_lengths")


def test_an_unknown_slot_type_lists_the_registered_ones():
  from ofa_jax import instructions  # pylint: disable=g-import-not-at-top
  with pytest.raises(instructions.InstructionError, match="TOY") as info:
    modalities.register("TOY", "tests.toy_modality:TOY")
    try:
      assert instructions.parse("[TOY:x] -> [TEXT:y]").source_slots()[0].modality \
          == "TOY"
    finally:
      modalities.remove("TOY")
    instructions.parse("[TOY:x] -> [TEXT:y]")
  assert "TEXT" in str(info.value)


@pytest.mark.slow
def test_inspect_task_shows_a_data_only_audio_task(vocab):
  import io  # pylint: disable=g-import-not-at-top
  from tools import inspect_task  # pylint: disable=g-import-not-at-top
  wave = np.sin(np.arange(3200, dtype=np.float32) / 7.0)[None]
  src = _source({"wav": wave, "text": ["hi"]})
  plan.register_task("t_audio_inspect", "[AUDIO:wav,max_frames=20] what is "
                     "said? -> [TEXT:text]", src, vocabulary=vocab, replace=True,
                     data_only=True)
  try:
    out = io.StringIO()
    inspect_task.inspect("t_audio_inspect", 1, "train",
                         {"inputs": 16, "targets": 8, "audio": 20}, out=out)
    text = out.getvalue()
    assert "AUDIO frames=18/20" in text, text
    assert "audio: float32[20, 80]" in text, text
    assert "data-side only (inspection; not trainable): ['t_audio_inspect']" \
        in text
  finally:
    seqio.TaskRegistry.remove("t_audio_inspect")
