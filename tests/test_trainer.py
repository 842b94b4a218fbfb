"""The training loop on a toy model and a toy SeqIO mixture, in process.

Also home of `toy_mixture()`, which registers the toy tasks (used by the gin,
resume and multi-host tests, also from subprocesses with `tests/` on the path).
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from ofa_jax import checkpoints
from ofa_jax import data_iterator
from ofa_jax import features
from ofa_jax import optimizers
from ofa_jax import partitioning
from ofa_jax import run_dir
from ofa_jax import train_state as train_state_lib
from ofa_jax import trainer
from test_partitioning import ToyModel

LENGTH = 8
POISON = 62


def _examples(task_index: int, n: int, poison_index: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(100 + task_index)
  x = rng.integers(1, 60, size=(n, LENGTH)).astype(np.int32)
  if task_index == 1:  # a second, different "task": reversed copying
    y = x[:, ::-1].copy()
  else:
    y = np.roll(x, -1, axis=1)
  if poison_index >= 0:
    x[poison_index, 0] = POISON
  return {"inputs": x, "targets": y}


def toy_mixture(name: str = "toy_mix", num_examples: int = 256,
                poison_index: int = -1) -> str:
  """Registers two toy tasks and a mixture of them (rates 2:1); returns the name.

  `poison_index` puts the NaN-making token into that example of task 0.
  """
  vocab = seqio.PassThroughVocabulary(size=64)
  feats = {k: seqio.Feature(vocab, add_eos=False, dtype=tf.int32)
           for k in ("inputs", "targets")}
  feats["task_id"] = seqio.Feature(vocab, add_eos=False, dtype=tf.int32, rank=0)
  tasks = []
  for i in range(2):
    task_name = f"{name}_task{i}"
    data = _examples(i, num_examples, poison_index if i == 0 else -1)

    def dataset_fn(split, shuffle_files, seed=None, data=data,
                   task_id=features.task_id_of(task_name)):
      del split, shuffle_files, seed
      ds = tf.data.Dataset.from_tensor_slices(data)
      ds = ds.map(lambda ex: dict(ex, task_id=tf.constant(task_id, tf.int32)))
      return ds

    seqio.TaskRegistry.remove(task_name)
    seqio.TaskRegistry.add(
        task_name, seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[], output_features=feats)
    tasks.append(task_name)
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(tasks[0], 2.0), (tasks[1], 1.0)])
  return name


def _train(model_dir, *, steps=6, model=None, mixture=None, **kw):
  mixture = mixture or toy_mixture()
  args = dict(model=model or ToyModel(), model_dir=str(model_dir),
              mixture_or_task_name=mixture,
              task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
              train_steps=steps, batch_size=16,
              optimizer=optimizers.adamw(learning_rate=1e-2, total_steps=steps,
                                         warmup_steps=1),
              partitioner=partitioning.make_partitioner(num_partitions=2),
              checkpoint_period=2, log_period=2, seed=3, async_checkpoints=False,
              handle_signals=False)
  args.update(kw)
  return trainer.train(**args)


def test_data_iterator_is_deterministic_and_resumes_exactly():
  mix = toy_mixture()
  config = data_iterator.DataConfig(mix, {"inputs": LENGTH, "targets": LENGTH},
                                    batch_size=8, seed=5)
  conv = seqio.PassThroughFeatureConverter()
  a = data_iterator.DataIterator(config, conv)
  first = [next(a) for _ in range(5)]
  position = a.position()
  assert position["batches_consumed"] == 5
  rest = [next(a) for _ in range(2)]
  b = data_iterator.DataIterator(config, conv)
  b.restore(position)
  for x, y in zip(rest, [next(b) for _ in range(2)]):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # Both tasks appear (the mixture mixes), and another seed gives other batches.
  ids = np.concatenate([f["task_id"] for f in first])
  assert len(np.unique(ids)) == 2
  c = data_iterator.DataIterator(
      data_iterator.DataConfig(mix, {"inputs": LENGTH, "targets": LENGTH},
                               batch_size=8, seed=6), conv)
  assert not np.array_equal(next(c)["inputs"], first[0]["inputs"])
  with pytest.raises(ValueError, match="seed: checkpoint 7 vs now 6"):
    c.restore(dict(position, seed=7))


@pytest.mark.slow
def test_train_writes_checkpoints_metrics_and_summaries(tmp_path):
  result = _train(tmp_path, steps=6, label_smoothing=0.1)
  assert result.status == "done" and result.step == 6
  assert checkpoints.CheckpointManager(str(tmp_path)).all_steps() == [2, 4, 6]
  info = (tmp_path / "model-info.txt").read_text()
  assert "logical=('embed', 'mlp')" in info and "mesh=(None, 'model')" in info
  assert (tmp_path / "config.gin").exists()
  # The same facts for programs, without parsing the text or the log.
  params = jax.tree.leaves(result.state.params)
  assert run_dir.read_model_info(str(tmp_path))["total_parameters"] == sum(
      int(np.size(x)) for x in params)
  progress = run_dir.read_progress(str(tmp_path))
  assert (progress["step"], progress["train_steps"]) == (6, 6)
  scalars = trainer.read_scalars(str(tmp_path / "train"))
  assert [s for s, _ in scalars["loss"]] == [2, 4, 6]
  assert "toy_mix_task0/loss" in scalars and "toy_mix_task1/accuracy" in scalars
  assert "tokens_per_sec" in scalars and "grad_norm" in scalars
  losses = [v for _, v in scalars["loss"]]
  assert losses[-1] < losses[0]
  # Running again with the same MODEL_DIR resumes at the end: nothing to do.
  again = _train(tmp_path, steps=6, label_smoothing=0.1)
  assert again.step == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.state.params),
               jax.device_get(result.state.params))


@pytest.mark.slow
def test_microbatching_matches_full_batch():
  model = ToyModel(dropout=0.0)
  tx = optimizers.adamw(learning_rate=1e-2, total_steps=4, warmup_steps=0)
  _, init = train_state_lib.abstract_and_init(
      lambda r: model.get_initial_variables(r, {"inputs": (1, LENGTH)}), tx)
  state = init(jax.random.key(0))
  batch = _examples(0, 16, -1)
  batch["task_id"] = np.arange(16, dtype=np.int32) % 3
  # Uneven loss tokens per microbatch: the accumulation must weight by tokens.
  batch["targets"][::4, 2:] = 0
  rng = jax.random.key(1)
  outs = {}
  for k in (1, 4):
    step = jax.jit(train_state_lib.make_train_step(model, tx, microbatches=k))
    outs[k] = step(state, batch, rng)
  (s1, m1, p1), (s4, m4, p4) = outs[1], outs[4]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               s4.params, s1.params)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  # Per-example outputs come back in the batch's order.
  np.testing.assert_array_equal(p4["task_id"], batch["task_id"])
  np.testing.assert_allclose(p4["loss_sum"], p1["loss_sum"], rtol=1e-5)
  with pytest.raises(ValueError, match="microbatches=3"):
    jax.jit(train_state_lib.make_train_step(model, tx, microbatches=3))(
        state, batch, rng)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # No shuffling: the poisoned example 50 of task 0 is in a known batch.
  mix = toy_mixture("toy_nan", poison_index=50)
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step (\d+)") as e:
    _train(tmp_path, steps=40, mixture=mix, shuffle=False,
           model=ToyModel(poison_token=POISON))
  bad_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  steps = checkpoints.CheckpointManager(str(tmp_path)).all_steps()
  assert steps and max(steps) < bad_step
  assert f"last good checkpoint is step {max(steps)}" in str(e.value)
  # The last checkpoint loads and holds finite parameters.
  params = checkpoints.load_params(str(tmp_path), _abstract_params())
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def _abstract_params():
  variables = jax.eval_shape(lambda: ToyModel().get_initial_variables(
      jax.random.key(0), {"inputs": (1, LENGTH)}))
  import flax.linen as nn
  return nn.meta.unbox(variables["params"])


def test_schedule_is_ofa_polynomial_decay():
  sched = optimizers.ofa_polynomial_decay(learning_rate=1.0, total_steps=100,
                                          warmup_ratio=0.1, end_learning_rate=0.1)
  got = [float(sched(t)) for t in (0, 5, 10, 55, 100, 200)]
  np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)
  with pytest.raises(ValueError, match="total_steps"):
    optimizers.ofa_polynomial_decay(learning_rate=1.0, total_steps=0)


@pytest.mark.slow
def test_finetune_starts_from_initial_checkpoint(tmp_path):
  first = _train(tmp_path / "pre", steps=2)
  # Learning rate 0: the fine-tuned parameters stay those of the checkpoint.
  tuned = _train(tmp_path / "ft", steps=1, initial_checkpoint_path=str(
      tmp_path / "pre"), optimizer=optimizers.adamw(learning_rate=0.0,
                                                    total_steps=1))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(tuned.state.params),
               jax.device_get(first.state.params))
  with pytest.raises(checkpoints.CheckpointError, match="shape mismatch"):
    _train(tmp_path / "ft2", steps=1, model=ToyModel(mlp=48),
           initial_checkpoint_path=str(tmp_path / "pre"))


@pytest.mark.slow
def test_partial_initial_checkpoint_falls_back_to_scratch(tmp_path):
  """INITIAL_CHECKPOINT_FALLBACK_TO_SCRATCH: a backbone-only checkpoint loads its
  part; every other parameter is what a run from scratch starts with."""
  from ofa_jax import checkpoint_conversion
  still = lambda: optimizers.adamw(learning_rate=0.0, total_steps=1)  # noqa: E731
  donor = jax.device_get(_train(tmp_path / "donor", steps=2).state.params)
  scratch = jax.device_get(_train(tmp_path / "scratch", steps=1,
                                  optimizer=still()).state.params)
  part = sorted(donor)[0]
  checkpoint_conversion.save_converted({"params": {part: donor[part]}},
                                       str(tmp_path / "backbone"), metadata={})
  with pytest.raises(checkpoints.CheckpointError, match="missing in checkpoint"):
    _train(tmp_path / "strict", steps=1, optimizer=still(),
           initial_checkpoint_path=str(tmp_path / "backbone"))
  got = jax.device_get(_train(
      tmp_path / "partial", steps=1, optimizer=still(),
      initial_checkpoint_path=str(tmp_path / "backbone"),
      initial_checkpoint_fallback_to_scratch=True).state.params)
  for name in donor:
    jax.tree.map(np.testing.assert_array_equal, got[name],
                 donor[name] if name == part else scratch[name])


@pytest.mark.slow
def test_dropout_prng_impl_is_deterministic_and_changes_the_masks(tmp_path):
  """The default PRNG (unsafe_rbg) draws the same masks run after run; JAX's
  threefry, still selectable, draws others (same init: other updates)."""
  assert train_state_lib.DEFAULT_DROPOUT_PRNG == "unsafe_rbg"
  default = [_train(tmp_path / f"default{i}", steps=2) for i in range(2)]
  threefry = _train(tmp_path / "threefry", steps=2, prng_impl="threefry2x32")
  params = [jax.device_get(r.state.params) for r in default + [threefry]]
  jax.tree.map(np.testing.assert_array_equal, params[0], params[1])
  differs = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.array_equal(a, b), params[0], params[2]))
  assert any(differs)  # other dropout masks, other updates (same init)


def test_unknown_dropout_prng_is_refused_before_anything_runs(tmp_path):
  with pytest.raises(ValueError, match="dropout PRNG 'philox'"):
    _train(tmp_path / "bad", steps=1, prng_impl="philox")
  assert not (tmp_path / "bad").exists()


def test_run_options_recorded_are_the_ones_the_tasks_agree_on():
  from ofa_jax import modalities
  assert "image_size" in {o.key for o in modalities.run_options()}
  assert modalities.recorded_run_options(
      [{"image_size": 64}, {}, {"image_size": 64, "other": 1}]) == {
          "image_size": 64}
  assert modalities.recorded_run_options(
      [{"image_size": 64}, {"image_size": 32}]) == {}
