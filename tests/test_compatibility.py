"""A workdir written by the code before the restructure (commit 1164ae7) resumes and evaluates.

The fixture is a tiny run (configs/tiny.py, 2 meta-steps, methods none and
learned on 4 test tasks) made with that commit, under the tests' XLA flags:
its config.json, metrics.jsonl, checkpoints and report, and the states that
commit restored from its checkpoints (`state_<which>_step<N>.npz`, saved by
its own `Checkpoints.restore`), to compare with what this code restores.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from autoaug_jax.config import builders
from autoaug_jax.core import sharding
from autoaug_jax.run import evaluate, train
from autoaug_jax.run import workdir as workdir_lib
from autoaug_jax.run.checkpointing import Checkpoints

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'workdir_1164ae7'


@pytest.fixture
def old_workdir(tmp_path):
  path = tmp_path / 'run'
  shutil.copytree(FIXTURE, path, ignore=shutil.ignore_patterns('state_*.npz'))
  return path


def test_old_checkpoints_restore_to_the_same_arrays(old_workdir):
  config = workdir_lib.load_workdir_config(str(old_workdir))
  target = builders.meta_setup(config).init_state(sharding.make_mesh(1))
  ckpts = Checkpoints(str(old_workdir), read_only=True)
  assert ckpts.damaged == []
  for saved in sorted(FIXTURE.glob('state_*.npz')):
    which, step = saved.stem.split('_')[1], int(saved.stem.split('step')[1])
    state, got = ckpts.restore(which, target)
    assert got == step
    restored = {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}
    with np.load(saved) as old:
      assert sorted(old.files) == sorted(restored)  # the same state structure
      for key in old.files:
        np.testing.assert_array_equal(restored[key], old[key], err_msg=key)
  ckpts.close()


@pytest.mark.slow
def test_old_workdir_evaluates_and_resumes(old_workdir):
  old = json.loads((FIXTURE / 'results.json').read_text())
  evaluate.evaluate_checkpoint(str(old_workdir), 'best')
  again = json.loads((old_workdir / 'eval_best_step2' / 'results.json').read_text())
  assert list(again['per_task_accuracy']) == list(old['per_task_accuracy']) == ['none',
                                                                               'learned']
  assert again['header']['checkpoint'] == old['header']['checkpoint']
  # Numbers are compared bit for bit in BUILD_NOTES (same machine, before and after);
  # here, across machines, a float rounding may flip one query's argmax.
  for method, accs in old['per_task_accuracy'].items():
    np.testing.assert_allclose(again['per_task_accuracy'][method], accs, atol=1 / 6 + 1e-6)

  config = workdir_lib.load_workdir_config(str(old_workdir))
  config.num_meta_steps = 4
  train.train_and_evaluate(config, str(old_workdir))
  ckpts = Checkpoints(str(old_workdir), read_only=True)
  assert ckpts.latest_step() == 4 and ckpts.damaged == []
  ckpts.close()
  steps = [json.loads(line)['step'] for line in
           (old_workdir / 'metrics.jsonl').read_text().splitlines()
           if 'train/meta_loss' in line]
  assert steps == [1, 2, 3, 4]  # the old run's lines kept, the new ones appended
