"""The orchestrator and entry points: artefacts, resume, evaluate, and user errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from autoaug_jax.config import builders
from autoaug_jax.core import meta_step, sharding
from autoaug_jax.errors import ConfigError, NonFiniteLossError, WorkdirError
from autoaug_jax.run import atomic_files, train
from autoaug_jax.run import workdir as workdir_lib
from autoaug_jax.run.checkpointing import Checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quick(config, methods=('none', 'learned')):
  config.eval.methods = methods
  config.eval.num_tasks = 4
  config.eval.batch_size = 4
  return config


def _params(workdir, which='latest'):
  """The checkpointed state of a workdir, on the host."""
  config = workdir_lib.load_workdir_config(str(workdir))
  run = builders.meta_setup(config)
  ckpts = Checkpoints(str(workdir), read_only=True)
  return jax.device_get(ckpts.restore(which, run.init_state(sharding.make_mesh(1)))[0])


def _run_cli(module, *args, cwd=REPO, timeout=600):
  return subprocess.run([sys.executable, '-m', f'autoaug_jax.{module}', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_main_then_evaluate_entry_points(tmp_path):
  workdir = tmp_path / 'run'
  # A relative --workdir, as users type it.
  out = _run_cli('main', f'--config={REPO}/configs/tiny.py', '--workdir=run',
                 '--config.eval.report_note=Why this run.\n  Two lines.', cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ('config.json', 'metrics.jsonl', 'report.md', 'deltas.png', 'augmentations.png',
               'results.json'):
    assert (workdir / name).exists(), name
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir / 'tensorboard'))
  assert sorted(os.listdir(workdir / 'checkpoints' / 'latest')) == ['2', '4']
  assert 1 <= len(os.listdir(workdir / 'checkpoints' / 'best')) <= 2  # the best and its fallback
  assert 'steps/s' in out.stderr and 'ETA' in out.stderr
  text = (workdir / 'report.md').read_text()
  for method in ('none', 'duplicate', 'fixed', 'random_convnet', 'learned'):
    assert f'| {method} |' in text
  assert text.splitlines()[2] == '- **about this run**: Why this run. Two lines.'
  results = json.loads((workdir / 'results.json').read_text())
  assert results['header']['checkpoint'].startswith('best (step ')

  # Evaluating the best checkpoint again reproduces the report's per-task numbers. (The
  # override, typed by the schema from its flag, changes the batching only.)
  out = _run_cli('evaluate', '--workdir=run', '--config.eval.batch_size=4', cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  best = results['header']['checkpoint'].split()[2].rstrip(',')
  folder = workdir / f'eval_best_step{best}__eval.batch_size=4'
  again = json.loads((folder / 'results.json').read_text())
  assert again['per_task_accuracy'] == results['per_task_accuracy']
  assert '**evaluation overrides**: eval.batch_size 6 -> 4' in (folder / 'report.md').read_text()
  out = _run_cli('evaluate', f'--workdir={workdir}', '--config.classifier.hidden=16')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      'error: --config.classifier.hidden cannot be overridden when evaluating a trained run')
  out = _run_cli('evaluate', f'--workdir={workdir}', '--checkpoint=7')
  assert out.returncode != 0 and 'No checkpoint at step 7' in out.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_and_its_advice_works(tiny_config, tmp_path, monkeypatch):
  config = _quick(tiny_config)
  # Validation at every step, checkpoints every 2: best/3 is saved after latest/2, before
  # the NaN at step 4, and belongs to the trajectory the lower learning rate replaces.
  config.checkpoint_every = 2
  config.eval.val_every = 1
  real = meta_step.MetaSetup.meta_step

  def poisoned(self, mesh, batch):
    step_fn = real(self, mesh, batch)

    def wrapped(state, split, consts):
      state, metrics = step_fn(state, split, consts)
      if int(state.step) == 4 and config.outer.lr == 1e-3:
        metrics = dict(metrics, meta_loss=np.float32('nan'))
        state = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
      return state, metrics
    return wrapped

  monkeypatch.setattr(meta_step.MetaSetup, 'meta_step', poisoned)
  with pytest.raises(NonFiniteLossError, match='Non-finite meta_loss at meta-step 4.*'
                                                     r'last good checkpoint is step 2.*'
                                                     r'lower --config.outer.lr') as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(error.value)
  state = _params(tmp_path)
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  old_best3 = _params(tmp_path, '3')

  # Follow the advice: the same workdir, a lower outer.lr. (The poison above only
  # strikes at the old learning rate, as a real divergence would.)
  config.outer.lr = 1e-4
  train.train_and_evaluate(config, str(tmp_path))
  assert int(_params(tmp_path).step) == config.num_meta_steps
  assert workdir_lib.read_changes(str(tmp_path)) == [
      {'step': 2, 'key': 'outer.lr', 'old': 1e-3, 'new': 1e-4}]
  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert {'step': 2, 'config/outer.lr': 1e-4} in lines
  assert [d['step'] for d in lines if 'train/meta_loss' in d] == [1, 2, 3, 4]
  # best/3 was made again on the new trajectory, not kept from the abandoned one.
  new_best3 = _params(tmp_path, '3')
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(old_best3.params), jax.tree.leaves(new_best3.params), strict=True))
  assert ('**config changes during training**: outer.lr 0.001 -> 0.0001 from meta-step 2'
          in (tmp_path / 'report.md').read_text())
  # On a finished run the same change would do nothing: refused, the record untouched.
  config.outer.lr = 1e-5
  with pytest.raises(ConfigError, match=r'has finished its 4 meta-steps, so outer.lr would '
                                        'change nothing'):
    train.train_and_evaluate(config, str(tmp_path))
  assert len(workdir_lib.read_changes(str(tmp_path))) == 1


def test_user_errors_before_anything_compiles(tiny_config, tmp_path):
  bad = _quick(tiny_config)
  bad.task.n_way = 20  # the 16 meta-val classes cannot make a 20-way task
  with pytest.raises(ConfigError, match='task.n_way=20 but glyphs/val has only 16 classes'):
    train.train_and_evaluate(bad, str(tmp_path / 'a'))
  assert not (tmp_path / 'a').exists()  # refused before touching the workdir
  bad.task.n_way = 3
  bad.task.k_shot = 7
  with pytest.raises(ConfigError, match=r'task.k_shot \+ task.q_query = 9 images per class'):
    train.train_and_evaluate(bad, str(tmp_path / 'b'))
  bad.task.k_shot = 2
  bad.inner.steps = 0
  with pytest.raises(ConfigError, match='inner.steps=0 must be a positive integer'):
    train.train_and_evaluate(bad, str(tmp_path / 'c'))
  bad.inner.steps = 2
  (tmp_path / 'file').write_text('not a directory')
  with pytest.raises(WorkdirError, match='Cannot write to --workdir=.*file/run'):
    train.train_and_evaluate(bad, str(tmp_path / 'file' / 'run'))


@pytest.mark.slow
def test_resuming_with_a_different_config_is_refused(tiny_config, tmp_path):
  config = _quick(tiny_config)
  config.num_meta_steps = 2
  config.eval.val_every = 0
  train.train_and_evaluate(config, str(tmp_path))
  before = (tmp_path / 'config.json').read_text()
  config.augmenter.latent_channels = 6
  with pytest.raises(ConfigError, match=r'different config \(augmenter.latent_channels: 4 -> 6'):
    train.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / 'config.json').read_text() == before  # untouched


@pytest.mark.slow
def test_frozen_augmenter_is_evaluated_without_training(tiny_config, tmp_path):
  config = _quick(tiny_config)
  config.augmenter.frozen = True
  rows = train.train_and_evaluate(config, str(tmp_path))
  assert [r.method for r in rows] == ['none', 'convnet']
  assert not (tmp_path / 'checkpoints' / 'latest').exists() or not os.listdir(
      tmp_path / 'checkpoints' / 'latest')


@pytest.mark.slow
def test_cli_reports_one_clear_error(tmp_path):
  out = _run_cli('main', '--config=configs/tiny.py', f'--workdir={tmp_path}',
                 '--config.augmenter.name=stylegan')
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      "error: augmenter.name='stylegan' is unknown; choose one of ['convnet', 'diffusion', "
      "'duplicate', 'fixed', 'none', 'random_convnet', 'resnet50'].")
  assert 'Traceback' not in out.stderr


def test_workdir_from_before_a_schema_addition_still_resumes(tiny_config, tmp_path):
  """A config.json written before a key existed counts that key as its default."""
  workdir_lib.write_config(str(tmp_path), tiny_config)
  path = tmp_path / 'config.json'
  old = json.loads(path.read_text())
  del old['classifier']['embed_once'], old['classifier']['trainable_blocks']
  path.write_text(json.dumps(old))
  assert workdir_lib.prepare_workdir(str(tmp_path), tiny_config) == []  # the defaults match
  tiny_config.classifier.trainable_blocks = 1
  with pytest.raises(ConfigError, match=r'classifier.trainable_blocks: 3 -> 1'):
    workdir_lib.prepare_workdir(str(tmp_path), tiny_config)


def test_reopening_a_workdir_removes_what_a_kill_left_mid_write(tiny_config, tmp_path):
  # A write interrupted before its rename.
  with pytest.raises(KeyboardInterrupt), atomic_files.replacing(str(tmp_path / 'report.md')) as tmp:
    pathlib.Path(tmp).write_text('half')
    raise KeyboardInterrupt
  (tmp_path / 'examples.npz.tmp-77.npz').write_text('half')
  (tmp_path / 'notes.tmp.md').write_text('mine')
  workdir_lib.prepare_workdir(str(tmp_path), tiny_config)
  assert sorted(os.listdir(tmp_path)) == ['notes.tmp.md']


def test_workdir_config_with_unknown_or_missing_keys_is_one_line(tiny_config, tmp_path):
  workdir_lib.write_config(str(tmp_path), tiny_config)
  path = tmp_path / 'config.json'
  good = json.loads(path.read_text())
  newer = {**good, 'inner': {**good['inner'], 'momentum': 0.9}}
  path.write_text(json.dumps(newer))
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"config.json has key 'inner.momentum', which this version of "
                           r'autoaug_jax does not know .*Use the version that wrote it'):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  damaged = {**good, 'task': {'n_way': 3}}
  path.write_text(json.dumps(damaged))
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"config.json lacks key 'task.k_shot' \(and 1 more\): the file is "
                           'damaged'):
    workdir_lib.load_workdir_config(str(tmp_path))
  wrong_type = {**good, 'seed': 1.5}
  path.write_text(json.dumps(wrong_type))
  with pytest.raises(workdir_lib.WorkdirError, match=r'seed=1.5 has the wrong type'):
    workdir_lib.load_workdir_config(str(tmp_path))
  path.write_text('{"seed": 0, "task": ')
  with pytest.raises(workdir_lib.WorkdirError, match='config.json cannot be read'):
    workdir_lib.load_workdir_config(str(tmp_path))
