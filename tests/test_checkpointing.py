"""Checkpoints: idempotent saves, best selection, damaged folders, older workdirs."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from autoaug_jax.run.checkpointing import MANIFEST, CheckpointError, Checkpoints


def _state(value: float, shape=(3, 4)):
  return {'params': {'w': jnp.full(shape, value, jnp.float32)},
          'step': jnp.asarray(int(value), jnp.int32)}


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
  return float(state['params']['w'][0, 0]), step


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
  assert step == 2 and float(state['params']['w'][0, 0]) == 2.0
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
  np.testing.assert_array_equal(state['params']['w'], np.full((3, 4), 5.0))
  ckpts.close()


def test_resume_drops_bests_made_after_the_latest_checkpoint(tmp_path):
  """A run killed after best/10 (latest 8) recomputes step 10, perhaps with a lower
  learning rate after a NaN: the old best/10 must not stand in for the new one, and the
  best so far is the one latest/8 knew."""
  ckpts = Checkpoints(str(tmp_path), keep=2)
  ckpts.save_latest(4, _state(4))
  assert ckpts.save_best(5, _state(5), 0.5)
  ckpts.save_latest(8, _state(8))
  assert ckpts.save_best(10, _state(10), 0.7)
  ckpts.close()
  ckpts = Checkpoints(str(tmp_path), keep=2)
  ckpts.resume(8)
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'best')) == ['5']
  assert not ckpts.save_best(10, _state(10.5), 0.45)  # below best/5, recorded with latest/8
  assert ckpts.save_best(10, _state(10.5), 0.55)
  assert ckpts.best_step() == 10 and ckpts.best_val_acc() == 0.55
  ckpts.save_latest(12, _state(12))
  ckpts.close()
  assert _restored(tmp_path, 'best') == (10.5, 10)
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'latest')) == ['12', '8']


def test_the_best_a_latest_save_recorded_is_kept_for_its_resume(tmp_path):
  ckpts = Checkpoints(str(tmp_path), keep=2)
  ckpts.save_best(1, _state(1), 0.5)
  ckpts.save_latest(2, _state(2))  # records best/1
  ckpts.save_best(3, _state(3), 0.6)
  ckpts.save_best(4, _state(4), 0.7)  # best/1 is not among the newest two, but latest/2 needs it
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'best')) == ['1', '3', '4']
  ckpts.save_latest(5, _state(5))  # records best/4: best/1 can go
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'best')) == ['3', '4']
  ckpts.close()


def test_weights_of_another_architecture_are_named_before_any_restore(tmp_path):
  _saved(tmp_path)
  ckpts = Checkpoints(str(tmp_path), read_only=True)
  ckpts.check_matches(_state(0.0))
  with pytest.raises(CheckpointError, match=r'checkpoint latest/4 does not fit this config: '
                                            r'parameter w is \(3, 4\) there and \(3, 5\) here'):
    ckpts.check_matches(_state(0.0, shape=(3, 5)))
  ckpts.close()


def test_no_usable_latest_and_an_interrupted_deletion(tmp_path):
  root = _saved(tmp_path)
  # A kill inside a deletion leaves Orbax's temporary form; the next opening removes it.
  os.rename(root / 'latest' / '2', root / 'latest' / '2.orbax-checkpoint-tmp-deleting123')
  ckpts = Checkpoints(str(tmp_path), keep=2)
  assert ckpts.latest_step() == 4 and not (root / 'latest' / '2.orbax-checkpoint-tmp-deleting123'
                                           ).exists()
  ckpts.close()
  with open(root / 'latest' / '4' / MANIFEST, 'w') as f:
    f.write('{')
  ckpts = Checkpoints(str(tmp_path), keep=2)
  assert ckpts.latest_step() is None
  assert ckpts.damaged == ['latest/4 (its manifest is unreadable)']
  ckpts.close()
