"""Orbax round trips of the sharded train state, keep-last-N, fine-tune loads, errors."""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest

from ofa_jax import checkpoints
from ofa_jax import optimizers
from ofa_jax import partitioning
from ofa_jax import train_state as train_state_lib
from test_partitioning import ToyModel


def _state(partitioner, model=None, seed=0):
  model = model or ToyModel()
  tx = optimizers.adamw(learning_rate=1e-3, total_steps=10)
  abstract, init = train_state_lib.abstract_and_init(
      lambda r: model.get_initial_variables(r, {"inputs": (1, 8)}), tx)
  shardings = partitioner.logical_to_mesh_shardings(abstract)
  state = partitioner.jit(init, in_shardings=None, out_shardings=shardings)(
      jax.random.key(seed))
  return state, shardings


def _trained(partitioner, state, shardings, steps=3):
  """`state` after a few AdamW steps on toy batches (moments no longer zero)."""
  model = ToyModel()
  tx = optimizers.adamw(learning_rate=1e-3, total_steps=10)
  step = partitioner.jit(
      train_state_lib.make_train_step(model, tx),
      in_shardings=(shardings, partitioner.data_sharding, partitioner.replicated),
      out_shardings=(shardings, partitioner.replicated, partitioner.replicated))
  rng = np.random.default_rng(0)
  for _ in range(steps):
    x = rng.integers(1, 64, size=(8, 8)).astype(np.int32)
    batch = {"inputs": x, "targets": np.roll(x, -1, axis=1)}
    state, _, _ = step(state, partitioner.shard_batch(batch), jax.random.key(0))
  return state


def _adam_moments(opt_state) -> list[optax.ScaleByAdamState]:
  return [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x),
                                                          np.asarray(y)), a, b)


@pytest.mark.slow
def test_round_trip_keeps_values_and_sharding(tmp_path):
  part = partitioning.make_partitioner(num_partitions=2, fsdp=True)
  state, shardings = _state(part)
  state = _trained(part, state, shardings, steps=3)
  assert int(state.step) == 3
  # Real moments: every mu and nu leaf holds non-zero values (a fresh state's
  # are all zero, which a restore that dropped them would reproduce).
  (moments,) = _adam_moments(state.opt_state)
  leaves = jax.tree.leaves((moments.mu, moments.nu))
  assert leaves and all(np.any(np.asarray(m) != 0) for m in leaves)
  assert int(moments.count) == 3
  mgr = checkpoints.CheckpointManager(str(tmp_path), save_period=1)
  assert mgr.save(3, state, {"batches": 3}, {"seed": 1})
  mgr.wait()
  other, _ = _state(part, seed=1)  # different values, same structure
  restored, data, meta = mgr.restore(other)
  mgr.close()
  assert data == {"batches": 3} and meta == {"seed": 1}
  assert int(restored.step) == 3
  _assert_trees_equal(restored, state)
  kernel = restored.params["wi"]["kernel"]
  assert kernel.sharding.spec == state.params["wi"]["kernel"].sharding.spec
  # The Adam moments came back too (not just the params), with their shardings.
  (got,) = _adam_moments(restored.opt_state)
  _assert_trees_equal(got, moments)
  assert (got.mu["wi"]["kernel"].sharding.spec
          == moments.mu["wi"]["kernel"].sharding.spec)


@pytest.mark.slow
def test_keep_last_n_and_period(tmp_path):
  part = partitioning.make_partitioner()
  state, _ = _state(part)
  mgr = checkpoints.CheckpointManager(str(tmp_path), save_period=2, keep=2)
  saved = [mgr.save(s, state, {}, {}) for s in range(1, 8)]
  mgr.wait()
  assert saved == [False, True, False, True, False, True, False]
  assert mgr.save(7, state, {}, {}, force=True)
  assert not mgr.save(7, state, {}, {}, force=True)  # already there
  mgr.close()
  assert checkpoints.CheckpointManager(str(tmp_path)).all_steps() == [6, 7]


@pytest.mark.slow
def test_restore_into_wrong_shapes_names_the_parameter(tmp_path):
  part = partitioning.make_partitioner()
  state, _ = _state(part)
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  mgr.save(1, state, {}, {}, force=True)
  mgr.wait()
  bigger, _ = _state(part, ToyModel(mlp=48))
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"wi.*kernel.*\(16, 32\) vs model \(16, 48\)"):
    mgr.restore(bigger)
  mgr.close()


@pytest.mark.slow
def test_load_params_for_finetuning(tmp_path):
  part = partitioning.make_partitioner(num_partitions=2)
  state, shardings = _state(part)
  mgr = checkpoints.CheckpointManager(str(tmp_path / "run"))
  mgr.save(3, state, {}, {}, force=True)
  mgr.close()
  fresh, fresh_sh = _state(part, seed=5)
  params = checkpoints.load_params(str(tmp_path / "run"), fresh.params)
  _assert_trees_equal(params, state.params)
  assert params["wi"]["kernel"].sharding.spec == fresh.params["wi"][
      "kernel"].sharding.spec

  other, _ = _state(part, ToyModel(embed=8, heads=2))
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.load_params(str(tmp_path / "run"), other.params)
  assert str(tmp_path / "run") in str(e.value)
  assert "shape mismatch" in str(e.value) and "embedding" in str(e.value)
  with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
    checkpoints.load_params(str(tmp_path / "nope"), other.params)


@pytest.mark.slow
def test_load_params_from_converted_layout(tmp_path):
  """The output of tools/convert_ofa_checkpoint.py (`checkpoint/{params,...}`)."""
  import orbax.checkpoint as ocp
  part = partitioning.make_partitioner()
  state, _ = _state(part)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(str(tmp_path / "conv" / "checkpoint"),
             {"params": jax.device_get(state.params)})
  ckptr.wait_until_finished()
  ckptr.close()
  fresh, _ = _state(part, seed=3)
  params = checkpoints.load_params(str(tmp_path / "conv"), fresh.params)
  _assert_trees_equal(params, state.params)


@pytest.mark.slow
def test_unfinished_save_is_invisible(tmp_path):
  """A step directory still being written (orbax tmp name) is never restored."""
  part = partitioning.make_partitioner()
  state, _ = _state(part)
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  mgr.save(1, state, {"batches": 1}, {}, force=True)
  mgr.close()
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-123" / "state")
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  assert mgr.latest_step() == 1
  _, data, _ = mgr.restore(state)
  assert data == {"batches": 1}
  mgr.close()


@pytest.mark.slow
def test_partial_checkpoint_falls_back_to_scratch(tmp_path):
  """t5x's fallback_to_scratch: a checkpoint with part of the model (e.g. a
  pretrained backbone) loads that part; the rest keeps its initialization."""
  part = partitioning.make_partitioner(num_partitions=2)
  state, _ = _state(part)
  saved = jax.device_get(state.params)
  fresh, _ = _state(part, seed=5)
  # A part whose initialization differs between the two seeds (not a zero bias).
  part_name = next(n for n in sorted(saved) if any(
      not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
          jax.tree.leaves(saved[n]), jax.tree.leaves(jax.device_get(fresh.params[n])))))
  checkpoint_conversion_dir = tmp_path / "partial"
  from ofa_jax import checkpoint_conversion
  checkpoint_conversion.save_converted(
      {"params": {part_name: saved[part_name]}}, str(checkpoint_conversion_dir),
      metadata={})
  with pytest.raises(checkpoints.CheckpointError, match="missing in checkpoint"):
    checkpoints.load_params(str(checkpoint_conversion_dir), fresh.params)
  params = checkpoints.load_params(str(checkpoint_conversion_dir), fresh.params,
                                   scratch=fresh.params)
  for name in saved:
    want = saved[name] if name == part_name else jax.device_get(fresh.params[name])
    _assert_trees_equal(params[name], want)
    jax.tree.map(lambda a, b: a.sharding.spec == b.sharding.spec or pytest.fail(
        f"{name}: sharding {a.sharding.spec} != {b.sharding.spec}"),
                 params[name], fresh.params[name])

  other, _ = _state(part, ToyModel(embed=8, heads=2))
  with pytest.raises(checkpoints.CheckpointError, match="shape mismatch"):
    checkpoints.load_params(str(checkpoint_conversion_dir), other.params,
                            scratch=other.params)
  checkpoint_conversion.save_converted(
      {"params": {"not_a_layer": {"kernel": np.zeros((2, 2), np.float32)}}},
      str(tmp_path / "foreign"), metadata={})
  with pytest.raises(checkpoints.CheckpointError, match="not in model: .*not_a_layer"):
    checkpoints.load_params(str(tmp_path / "foreign"), fresh.params,
                            scratch=fresh.params)
