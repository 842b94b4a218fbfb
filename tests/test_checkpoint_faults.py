"""A step folder damaged after orbax finished it is skipped, named, and moved aside.

Damage done on disk the way a crash or a full disk leaves it: array files cut
short, the array database's manifest gone, a JSON item half written.
"""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ofa_jax import checkpoints
from ofa_jax import optimizers
from ofa_jax import partitioning
from ofa_jax import run_dir
from test_checkpoints import _assert_trees_equal, _state
from test_partitioning import ToyModel
import test_trainer


def _truncate_arrays(step_dir) -> None:
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                recursive=True) if os.path.isfile(f)]
  assert files, f"no array files under {step_dir}"
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _delete_manifest(step_dir) -> None:
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _garble_data_item(step_dir) -> None:
  with open(os.path.join(step_dir, "data", "metadata"), "w") as f:
    f.write('{"batches": ')


def _saved(tmp_path, part, steps=(2, 4, 6)):
  state, _ = _state(part)
  mgr = checkpoints.CheckpointManager(str(tmp_path), save_period=1,
                                      async_save=False)
  for step in steps:
    assert mgr.save(step, state.replace(step=step), {"batches": step}, {})
  mgr.close()
  return state


@pytest.mark.parametrize("damage", [_truncate_arrays, _delete_manifest,
                                    _garble_data_item])
def test_damaged_latest_step_falls_back_and_is_moved_aside(tmp_path, caplog,
                                                           damage):
  part = partitioning.make_partitioner(num_partitions=2)
  state = _saved(tmp_path, part)
  damage(tmp_path / "6")
  mgr = checkpoints.CheckpointManager(str(tmp_path), save_period=1,
                                      async_save=False)
  with caplog.at_level(logging.WARNING):
    step, restored, data, _ = mgr.restore_latest(state)
  assert step == 4 and data == {"batches": 4} and int(restored.step) == 4
  _assert_trees_equal(restored.params, state.params)
  warned = [r.getMessage() for r in caplog.records
            if "damaged and skipped" in r.getMessage()]
  assert len(warned) == 1 and f"{tmp_path / '6'} is damaged" in warned[0]
  # Kept for inspection, out of the step namespace.
  moved = tmp_path / run_dir.DAMAGED / "6"
  assert moved.is_dir() and not (tmp_path / "6").exists()
  assert mgr.all_steps() == [2, 4] and run_dir.steps(str(tmp_path)) == [2, 4]
  # The run saves step 6 again, in a fresh folder.
  assert mgr.save(6, restored.replace(step=6), {"batches": 6}, {})
  mgr.close()
  again = checkpoints.CheckpointManager(str(tmp_path))
  assert again.restore_latest(state)[0] == 6
  again.close()


def test_every_step_damaged_raises_naming_each_and_moves_nothing(tmp_path):
  part = partitioning.make_partitioner(num_partitions=2)
  state = _saved(tmp_path, part, steps=(2, 4))
  _truncate_arrays(tmp_path / "4")
  _delete_manifest(tmp_path / "2")
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  with pytest.raises(checkpoints.DamagedCheckpointError) as err:
    mgr.restore_latest(state)
  mgr.close()
  text = str(err.value)
  assert f"{tmp_path / '4'}: ValueError: OUT_OF_RANGE" in text
  assert f"{tmp_path / '2'}: ValueError: NOT_FOUND" in text
  assert run_dir.steps(str(tmp_path)) == [2, 4]
  assert not (tmp_path / run_dir.DAMAGED).exists()


def test_model_mismatch_is_not_damage(tmp_path):
  part = partitioning.make_partitioner(num_partitions=2)
  _saved(tmp_path, part, steps=(2, 4))
  other, _ = _state(part, model=ToyModel(embed=32))
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  with pytest.raises(checkpoints.CheckpointError, match="shape mismatch") as err:
    mgr.restore_latest(other)
  mgr.close()
  assert not isinstance(err.value, checkpoints.DamagedCheckpointError)
  assert run_dir.steps(str(tmp_path)) == [2, 4]


def test_no_checkpoint_is_none(tmp_path):
  part = partitioning.make_partitioner(num_partitions=2)
  state, _ = _state(part)
  mgr = checkpoints.CheckpointManager(str(tmp_path))
  assert mgr.restore_latest(state) is None
  mgr.close()


def _final_state(model_dir, step):
  ckptr = ocp.PyTreeCheckpointer()
  try:
    return ocp.tree.to_flat_dict(
        ckptr.restore(os.path.join(model_dir, str(step), "state")))
  finally:
    ckptr.close()


@pytest.mark.slow
def test_training_resumes_from_the_previous_good_step(tmp_path, caplog):
  """Trained to 6, step 6 truncated on disk, restarted to 8: resumes from 4 and
  ends where an uninterrupted run to 8 ends, bit for bit."""
  mixture = test_trainer.toy_mixture()

  def train(model_dir, steps):
    return test_trainer._train(  # pylint: disable=protected-access
        model_dir, steps=steps, mixture=mixture,
        optimizer=optimizers.adamw(learning_rate=1e-2, total_steps=8,
                                   warmup_steps=1))

  straight, damaged = tmp_path / "straight", tmp_path / "damaged"
  assert train(straight, 8).step == 8
  assert train(damaged, 6).step == 6
  _truncate_arrays(damaged / "6")
  with caplog.at_level(logging.INFO):
    assert train(damaged, 8).step == 8
  messages = [r.getMessage() for r in caplog.records]
  assert any(f"{damaged / '6'} is damaged and skipped" in m for m in messages)
  assert any(f"resumed from {damaged} step 4" in m for m in messages)
  assert (damaged / run_dir.DAMAGED / "6").is_dir()
  assert {6, 8} <= set(run_dir.steps(str(damaged)))
  a, b = _final_state(straight, 8), _final_state(damaged, 8)
  assert a.keys() == b.keys()
  for k in a:  # parameters and Adam moments
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
