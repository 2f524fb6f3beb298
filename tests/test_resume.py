"""A run killed anywhere resumes exactly; evaluation restores any run, with overrides.

The fault-injection test runs the real entry point in subprocesses and kills
one workdir with SIGKILL at nine points in turn (tests/fault_injection.py), each
restart resuming the previous one, then compares the end result with an
uninterrupted run: the same latest and best checkpoints bit for bit, the same
metrics.jsonl, results.json and report. Checkpoint and validation intervals
are not aligned (every 4 and 5 steps of 12), as in the bug this test guards.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from autoaug_jax.config import builders
from autoaug_jax.core import sharding
from autoaug_jax.errors import ConfigError, WorkdirError
from autoaug_jax.run import evaluate, train
from autoaug_jax.run import workdir as workdir_lib
from autoaug_jax.run.checkpointing import Checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = (f'--config={REPO}/configs/tiny.py', "--config.eval.methods=('none','learned')",
        '--config.num_meta_steps=12', '--config.checkpoint_every=4',
        '--config.eval.val_every=5', '--config.inner.lr=1.0', '--config.outer.lr=0.01',
        '--config.meta_batch_size=2')  # the scenario below (best at step 10) is this one's
# (point, step) in the order one workdir is killed at (tests/fault_injection.py); after
# the validation kill, two of its checkpoints are also damaged (`_damage`).
KILLS = (('meta_step', 3), ('after_best', 5), ('orbax_write', 8), ('validation', 10),
         ('before_manifest', 8), ('between_saves', 12), ('deleting', 4), ('evaluation', 0),
         ('report', 0))


def _env(cache):
  # A shared persistent compilation cache: each restart compiles from it (bit-identical
  # executables) instead of from scratch, which keeps the test within two minutes.
  return {**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def _run(workdir, env, point=None, step=0):
  if point is None:
    cmd = [sys.executable, '-m', 'autoaug_jax.main']
  else:
    cmd = [sys.executable, os.path.join(REPO, 'tests', 'fault_injection.py'), point, str(step)]
  return subprocess.run([*cmd, *ARGS, f'--workdir={workdir}'], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _states(workdir):
  """Every checkpoint of a workdir on the host: {('latest'|'best', step): state}."""
  config = workdir_lib.load_workdir_config(str(workdir))
  target = builders.meta_setup(config).init_state(sharding.make_mesh(1))
  ckpts = Checkpoints(str(workdir), read_only=True)
  out = {}
  for name in ('latest', 'best'):
    for step in sorted(os.listdir(workdir / 'checkpoints' / name)):
      out[(name, int(step))] = jax.device_get(ckpts.restore(step, target)[0])
  ckpts.close()
  return out


def _same_run(a, b):
  sa, sb = _states(a), _states(b)
  assert sorted(sa) == sorted(sb) == [('best', 5), ('best', 10), ('latest', 8), ('latest', 12)]
  for key in sa:
    for x, y in zip(jax.tree.leaves(sa[key]), jax.tree.leaves(sb[key]), strict=True):
      np.testing.assert_array_equal(x, y, err_msg=str(key))

  def lines(w):
    return [line for line in (w / 'metrics.jsonl').read_text().splitlines()
            if 'perf/' not in line]
  assert lines(a) == lines(b)
  assert json.loads((a / 'results.json').read_text()) == json.loads(
      (b / 'results.json').read_text())
  assert (a / 'report.md').read_text() == (b / 'report.md').read_text()


def _damage(workdir):
  """Damaged files, as after a disk fault or a half-finished copy: latest/8 truncated,
  best/5 half-deleted."""
  data = workdir / 'checkpoints' / 'latest' / '8' / 'default' / 'd'
  for f in os.listdir(data):
    with open(data / f, 'r+b') as fh:
      fh.truncate(1)
  shutil.rmtree(workdir / 'checkpoints' / 'best' / '5' / 'default' / 'd')


@pytest.mark.slow
def test_a_run_killed_anywhere_resumes_exactly(tmp_path):
  env = _env(tmp_path / 'xla_cache')
  ref, killed = tmp_path / 'ref', tmp_path / 'killed'
  out = _run(ref, env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((ref / 'results.json').read_text())['header']['checkpoint'].startswith(
      'best (step 10, ')  # not the last step: best selection matters here

  for point, step in KILLS:
    out = _run(killed, env, point, step)
    assert out.returncode == -9, (point, out.stderr[-3000:])
    assert f'SIGKILL at {point} {step}' in out.stderr
    assert 'Traceback' not in out.stderr, (point, out.stderr[-3000:])
    if point == 'orbax_write':  # Orbax's temporary folder is left behind
      assert any('orbax-checkpoint-tmp' in n for n in os.listdir(killed / 'checkpoints/latest'))
    if point == 'validation':
      assert sorted(os.listdir(killed / 'checkpoints' / 'latest')) == ['4', '8']
      _damage(killed)
    if point == 'before_manifest':  # the run after the damage
      assert 'Checkpoint latest/8 is damaged (default/d/' in out.stderr
      assert 'Checkpoint best/5 is damaged (default/d/' in out.stderr
      assert 'Resumed from' in out.stderr and 'at step 4.' in out.stderr
      assert not (killed / 'checkpoints' / 'latest' / '8' / 'autoaug_manifest.json').exists()
    if point == 'between_saves':  # latest/8 has no manifest: Orbax reads it
      assert 'at step 8.' in out.stderr
    if point == 'deleting':
      assert any(n.startswith('4.orbax-checkpoint-tmp')
                 for n in os.listdir(killed / 'checkpoints' / 'latest'))
  out = _run(killed, env)
  assert out.returncode == 0, out.stderr[-3000:]
  # Killed while reporting: the restart resumed at evaluation, without retraining.
  assert 'Resumed from' in out.stderr and 'Meta-training' not in out.stderr
  assert 'Traceback' not in out.stderr
  # The damaged folders were kept aside for inspection; the rest is as if never killed.
  assert sorted(os.listdir(killed / 'checkpoints' / 'damaged')) == ['best-5', 'latest-8']
  shutil.rmtree(killed / 'checkpoints' / 'damaged')
  _same_run(ref, killed)


def _trained(config, workdir):
  config.eval.methods = ('none', 'learned')
  config.eval.num_tasks = config.eval.batch_size = 4
  train.train_and_evaluate(config, str(workdir))
  return json.loads((workdir / 'results.json').read_text())


@pytest.mark.slow
def test_evaluate_restores_any_run_with_overrides(tiny_config, tmp_path, caplog, monkeypatch):
  caplog.set_level(logging.INFO)
  tiny_config.eval.val_every = 0  # as every sweep run: no best checkpoint
  workdir = tmp_path / 'run'
  trained = _trained(tiny_config, workdir)

  evaluate.evaluate_checkpoint(str(workdir))
  assert ('has no best checkpoint (no meta-validation ran, or none is readable); evaluating '
          'the latest') in caplog.text
  plain = json.loads((workdir / 'eval_latest_step4' / 'results.json').read_text())
  assert plain['per_task_accuracy'] == trained['per_task_accuracy']
  assert plain['header']['checkpoint'] == 'latest (step 4)'

  # Trained at K = 2, evaluated at K = 1 on 3 tasks: its own folder, the overrides reported.
  overrides = {'task.k_shot': 1, 'eval.num_tasks': 3}
  evaluate.evaluate_checkpoint(str(workdir), overrides=overrides)
  out = workdir / 'eval_latest_step4__eval.num_tasks=3__task.k_shot=1'
  results = json.loads((out / 'results.json').read_text())
  assert len(results['per_task_accuracy']['learned']) == 3
  assert results['header']['evaluation overrides'] == (
      'eval.num_tasks 4 -> 3; task.k_shot 2 -> 1')
  assert '**evaluation overrides**: eval.num_tasks 4 -> 3; task.k_shot 2 -> 1' in (
      out / 'report.md').read_text()
  assert json.loads((workdir / 'eval_latest_step4' / 'results.json').read_text()) == plain
  # An explicit --out_dir holding another evaluation's results is not overwritten, and
  # one that cannot be written is one line.
  with pytest.raises(WorkdirError, match='holds the results of another evaluation'):
    evaluate.evaluate_checkpoint(str(workdir), out_dir=str(out))
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(WorkdirError, match='Cannot write the evaluation to .*a_file/x.*'
                                               'pass --out_dir=DIR'):
    evaluate.evaluate_checkpoint(str(workdir), out_dir=str(tmp_path / 'a_file' / 'x'))

  # Architecture changes are refused before anything is restored.
  monkeypatch.setattr(train, 'Checkpoints', None)  # any restore would now fail loudly
  for key, value in (('augmenter.latent_channels', 8), ('classifier.widths', (4, 8, 16)),
                     ('image_size', 32), ('seed', 3)):
    with pytest.raises(ConfigError, match=rf'--config.{key} cannot be overridden when '
                                          'evaluating a trained run'):
      evaluate.evaluate_checkpoint(str(workdir), overrides={key: value})
  assert sorted(p.name for p in workdir.iterdir() if p.name.startswith('eval_')) == [
      'eval_latest_step4', out.name]


def test_eval_dirname_is_unique_and_bounded():
  name = workdir_lib.eval_dirname('best', 100, {'data.dir': ('/a', '/x/y z' * 40)})
  assert name.startswith('eval_best_step100__data.dir=x_y_z_x') and len(name) <= 150
  other = workdir_lib.eval_dirname('best', 100, {'data.dir': ('/a', '/x/y z' * 41)})
  assert other != name
  assert workdir_lib.eval_dirname('7', 7, {}) == 'eval_7'
