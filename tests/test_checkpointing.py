"""Checkpoints: idempotent saves, best selection, damaged folders, older workdirs."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from autoaug_jax.checkpointing import MANIFEST, CheckpointError, Checkpoints


def _state(value: float):
  return {'w': jnp.full((3, 4), value, jnp.float32), 'step': jnp.asarray(int(value), jnp.int32)}


def _saved(workdir, steps=(2, 4), best=((2, 0.5), (4, 0.6))):
  ckpts = Checkpoints(str(workdir), keep=2)
  for s in steps:
    ckpts.save_latest(s, _state(s))
  for s, acc in best:
    ckpts.save_best(s, _state(s), acc)
  ckpts.close()
  return workdir / 'checkpoints'


def _restored(workdir, which, read_only=True):
  ckpts = Checkpoints(str(workdir), read_only=read_only)
  state, step = ckpts.restore(which, _state(0.0))
  ckpts.close()
  return float(state['w'][0, 0]), step


def test_saves_are_idempotent_and_best_keeps_ties_for_the_later_step(tmp_path):
  ckpts = Checkpoints(str(tmp_path), keep=2)
  assert ckpts.save_latest(2, _state(2))
  # A resumed run recomputes step 2 bit for bit; saving it again must not fail.
  assert not ckpts.save_latest(2, _state(2))
  assert ckpts.save_best(2, _state(2), 0.5)
  assert ckpts.save_best(2, _state(2), 0.5)  # already the best: no StepAlreadyExistsError
  assert not ckpts.save_best(3, _state(3), 0.4)
  assert ckpts.save_best(4, _state(4), 0.5)  # a tie goes to the later step
  assert ckpts.best_step() == 4 and ckpts.best_val_acc() == 0.5
  assert ckpts.save_best(6, _state(6), 0.7)
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'best')) == ['4', '6']  # previous kept
  ckpts.close()
  # Reopened (a resumed run), the same decisions follow from what is on disk.
  ckpts = Checkpoints(str(tmp_path), keep=2)
  assert ckpts.best_step() == 6 and not ckpts.save_best(8, _state(8), 0.69)
  ckpts.close()
  assert _restored(tmp_path, 'best') == (6.0, 6)
  assert _restored(tmp_path, 'latest') == (2.0, 2)


@pytest.mark.parametrize('damage', ['truncate', 'delete'])
def test_damaged_latest_is_named_moved_aside_and_the_previous_one_used(tmp_path, damage,
                                                                      caplog):
  root = _saved(tmp_path)
  data = [os.path.join(r, f) for r, _, fs in os.walk(root / 'latest' / '4') for f in fs
          if '/d/' in os.path.join(r, f)]
  assert data
  for path in data:
    if damage == 'truncate':
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    else:
      os.remove(path)
  # Evaluation (read-only) skips it with a warning and leaves the folder alone.
  assert _restored(tmp_path, 'latest') == (2.0, 2)
  assert any('latest/4 is damaged' in r.getMessage() for r in caplog.records)
  assert (root / 'latest' / '4').exists()
  # A resumed run (writable) moves it to checkpoints/damaged/ and can save step 4 again.
  ckpts = Checkpoints(str(tmp_path), keep=2)
  assert ckpts.latest_step() == 2 and (root / 'damaged' / 'latest-4').is_dir()
  assert ckpts.save_latest(4, _state(4))
  ckpts.close()
  assert _restored(tmp_path, 'latest') == (4.0, 4)


def test_damaged_best_falls_back_to_the_previous_best(tmp_path):
  root = _saved(tmp_path)
  shutil.rmtree(root / 'best' / '4' / 'default')  # half-deleted
  ckpts = Checkpoints(str(tmp_path), read_only=True)
  assert ckpts.best_step() == 2 and ckpts.best_val_acc() == 0.5
  ckpts.close()


def test_checkpoint_without_manifest_that_orbax_cannot_read_falls_back(tmp_path, caplog):
  root = _saved(tmp_path)
  # A folder Orbax cannot read and no manifest to tell (an older version's save).
  os.remove(root / 'latest' / '4' / MANIFEST)
  shutil.rmtree(root / 'latest' / '4' / 'default')
  ckpts = Checkpoints(str(tmp_path), keep=2)
  state, step = ckpts.restore('latest', _state(0.0))
  assert step == 2 and float(state['w'][0, 0]) == 2.0
  assert any('latest/4 cannot be read' in r.getMessage() for r in caplog.records)
  assert (root / 'damaged' / 'latest-4').is_dir() and ckpts.latest_step() == 2
  ckpts.close()


def test_no_readable_checkpoint_is_one_line(tmp_path):
  root = _saved(tmp_path)
  for step in ('2', '4'):
    os.remove(root / 'latest' / step / MANIFEST)
    shutil.rmtree(root / 'latest' / step / 'default')
  ckpts = Checkpoints(str(tmp_path), read_only=True)
  with pytest.raises(CheckpointError) as e:
    ckpts.restore('latest', _state(0.0))
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith('No usable latest checkpoint in ') and 'step 4:' in message
  assert 'move the checkpoints/ folder aside' in message
  with pytest.raises(CheckpointError, match="checkpoint='x': use 'best', 'latest' or a step"):
    ckpts.restore('x', _state(0.0))
  ckpts.close()


def test_leftover_temporary_folder_of_a_killed_save_is_removed(tmp_path):
  root = _saved(tmp_path)
  tmp = root / 'latest' / '6.orbax-checkpoint-tmp-1234'
  shutil.copytree(root / 'latest' / '4', tmp)
  ckpts = Checkpoints(str(tmp_path), keep=2)
  assert not tmp.exists() and ckpts.latest_step() == 4
  assert ckpts.save_latest(6, _state(6))
  ckpts.close()


def test_best_checkpoint_of_the_previous_version_is_read(tmp_path):
  """Workdirs written before manifests kept the best by Orbax's own metrics."""
  directory = tmp_path / 'checkpoints' / 'best'
  manager = ocp.CheckpointManager(str(directory), options=ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda m: m['val_acc'], best_mode='max',
      keep_checkpoints_without_metrics=False, enable_async_checkpointing=False))
  manager.save(5, args=ocp.args.StandardSave(_state(5)), metrics={'val_acc': 0.625}, force=True)
  manager.close()
  assert json.loads((directory / '5' / 'metrics' / 'metrics').read_text()) == {'val_acc': 0.625}
  ckpts = Checkpoints(str(tmp_path), read_only=True)
  assert ckpts.best_step() == 5 and ckpts.best_val_acc() == 0.625
  state, step = ckpts.restore('best', _state(0.0))
  np.testing.assert_array_equal(state['w'], np.full((3, 4), 5.0))
  ckpts.close()
