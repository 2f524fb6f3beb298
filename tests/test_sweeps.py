"""Sweeps: spec parsing, overrides, the resumable runner and the aggregate."""

import json
import os

import numpy as np
import pytest
import scipy.stats

from autoaug_jax.config import sweeps
from autoaug_jax.errors import ConfigError, NonFiniteLossError, SweepError
from autoaug_jax.run import aggregate, train
from autoaug_jax.run import sweep as sweep_runner
from autoaug_jax.run import workdir as workdir_lib


def _read(path):
  with open(path) as f:
    return f.read()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'tiny.py')


def _write_sweep(path, members, overrides=()):
  path.write_text(json.dumps({'title': 'tiny study', 'x_label': 'K', 'overrides': list(overrides),
                              'members': members}))
  return str(path)


def test_overrides_parse_as_the_fields_types():
  config = sweeps.config_from_file(TINY)
  for override in ('task.k_shot=7', 'inner.lr=0.05', 'augmenter.frozen=true',
                   'augmenter.name=fixed', 'classifier.widths=4,6,8',
                   'eval.methods=none,learned', "eval.methods=('none', 'adapted')"):
    sweeps.apply_override(config, override)
  assert config.task.k_shot == 7 and config.inner.lr == 0.05 and config.augmenter.frozen is True
  assert config.augmenter.name == 'fixed' and config.classifier.widths == (4, 6, 8)
  assert config.eval.methods == ('none', 'adapted')
  sweeps.apply_override(config, "eval.methods='adapted'")
  assert config.eval.methods == ('adapted',)
  with pytest.raises(ConfigError, match="'task.k_shots' is not a config key"):
    sweeps.apply_override(config, 'task.k_shots=3')
  with pytest.raises(ConfigError, match='task.k_shot takes a int value'):
    sweeps.apply_override(config, 'task.k_shot=five')
  with pytest.raises(ConfigError, match='not a boolean'):
    sweeps.apply_override(config, 'augmenter.frozen=maybe')
  with pytest.raises(ConfigError, match='dotted.key=value'):
    sweeps.apply_override(config, 'task.k_shot')


def test_bad_sweeps_are_refused_before_anything_runs(tmp_path):
  with pytest.raises(ConfigError, match=r"no such sweep.*support_size"):
    sweeps.load_sweep('support_sizes')
  bad = tmp_path / 'bad.json'
  bad.write_text('{"members": [')
  with pytest.raises(ConfigError, match='not valid JSON'):
    sweeps.load_sweep(str(bad))
  dup = _write_sweep(tmp_path / 'dup.json', [{'name': 'a'}, {'name': 'a'}])
  with pytest.raises(ConfigError, match='names repeat'):
    sweeps.load_sweep(dup)
  impossible = _write_sweep(tmp_path / 'shape.json',
                            [{'name': 'n1', 'overrides': ['task.n_way=1']}])
  with pytest.raises(ConfigError, match=r"member 'n1'.*n_way=1 must be at least 2"):
    sweeps.plan(sweeps.load_sweep(impossible), TINY, str(tmp_path), 1)
  study = sweeps.load_sweep('support_size')
  runs = sweeps.plan(study, TINY, str(tmp_path), 1)
  assert [r.member.name for r in sweeps.select_runs(runs, study, ('k20', 'k1'))] == ['k1', 'k20']
  with pytest.raises(ConfigError, match=r"\['k3'\] not in .*'k1', 'k5'"):
    sweeps.select_runs(runs, study, ('k3',))
  with pytest.raises(ConfigError, match=r"--override sets \['task.k_shot'\], which .* sets"):
    sweeps.plan(study, TINY, str(tmp_path), 1, extra=('task.k_shot=3',))
  with pytest.raises(ConfigError, match='not starting with'):
    sweeps.load_sweep(_write_sweep(tmp_path / 'dots.json', [{'name': '..'}]))
  tasks = _write_sweep(tmp_path / 'tasks.json', [{'name': 'a'}, {'name': 'b', 'overrides': [
      'eval.num_tasks=50']}])
  with pytest.raises(ConfigError, match='different test tasks'):
    sweeps.plan(sweeps.load_sweep(tasks), TINY, str(tmp_path), 1)
  with pytest.raises(ConfigError, match='no such config file'):
    sweeps.plan(sweeps.load_sweep(dup.replace('dup', 'shape')), 'configs/nope.py', 'x', 1)


def test_every_study_plans_over_its_base(tmp_path):
  """The committed sweeps build valid configs, with every baseline, and 'adapted' except
  in the 500-step studies (issue 16), which leave it out to halve evaluation time."""
  studies = sweeps.available_sweeps()
  assert set(studies) == {'support_size', 'task_difficulty', 'augmentation_factor',
                          'augmenter_complexity', 'classifier_complexity', 'diffusion',
                          'training_length', 'spurious', 'synthetic_weight',
                          'synthetic_weight_shared'}
  long = {'training_length', 'spurious', 'synthetic_weight', 'synthetic_weight_shared'}
  sd = tmp_path / 'sd'
  for sub in ('unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler'):
    (sd / sub).mkdir(parents=True)
  expect = {'support_size': ('task.k_shot', [1, 5, 10, 20]),
            'task_difficulty': ('task.n_way', [2, 3, 5]),
            'augmentation_factor': ('augmenter.factor', [1, 2, 5]),
            'training_length': ('task.k_shot', [1, 5]),
            'spurious': ('data.spurious', [0.0, 0.5, 1.0]),
            'synthetic_weight': ('data.spurious', [0.0, 1.0]),
            'synthetic_weight_shared': ('data.spurious', [0.0, 1.0])}
  for study in studies:
    base = os.path.join(REPO, 'configs', 'diffusion.py' if study == 'diffusion'
                        else 'sweep_cpu.py')
    runs = sweeps.plan(sweeps.load_sweep(study), base, str(tmp_path), 2,
                       extra=(f'augmenter.sd_dir={sd}',))
    assert len(runs) == 2 * len(sweeps.load_sweep(study).members)
    for run in runs:
      assert run.config.eval.methods == ('none', 'duplicate', 'fixed', 'random_convnet',
                                         'learned') + (() if study in long else ('adapted',))
      if study in long:
        assert run.config.num_meta_steps == 500
      if study.startswith('synthetic_weight'):  # the weight's own optimiser, or the first design's
        assert run.config.outer.synthetic_weight_lr == (0.02 if study == 'synthetic_weight' else 0)
      assert run.config.augmenter.sd_dir == str(sd)  # --override reaches every member
      assert run.config.seed == run.seed
    if study in expect:
      key, values = expect[study]
      section, leaf = key.split('.')
      assert [r.config[section][leaf] for r in runs if r.seed == 0] == values
  # The diffusion study repeats its default point in every panel: it runs once per seed.
  runs = sweeps.plan(sweeps.load_sweep('diffusion'), os.path.join(REPO, 'configs/diffusion.py'),
                     str(tmp_path), 1, extra=(f'augmenter.sd_dir={sd}',))
  defaults = [r for r in runs if r.member.name in ('prompt8', 'steps10', 'size512', 'factor1',
                                                     'clip_vit')]
  assert len({r.workdir for r in defaults}) == 1
  assert len({r.workdir for r in runs}) == len(runs) - 4
  unique = sweeps.distinct(runs)
  assert [r.member.name for r in unique][:3] == ['prompt4', 'prompt8', 'prompt16']
  assert len(unique) == len(runs) - 4
  # Asked for alone, a shared point still runs in the first member's workdir.
  only = sweeps.select_runs(runs, sweeps.load_sweep('diffusion'), ('steps10',))
  assert only[0].workdir.endswith(os.path.join('prompt8', 'seed0'))


def _result(per_task):
  return {'per_task_accuracy': {m: list(map(float, a)) for m, a in per_task.items()}}


def test_aggregate_pools_paired_deltas_over_seeds_and_reports_their_spread():
  rng = np.random.default_rng(0)
  none = rng.uniform(0.3, 0.9, 50)
  seed_acc = [none + rng.normal(0.05, 0.1, 50), none + rng.normal(-0.02, 0.1, 50)]
  results = [_result({'none': none, 'learned': a, 'adapted': a + 0.01}) for a in seed_acc]
  del results[1]['per_task_accuracy']['adapted']  # e.g. skipped in one seed
  rows = {r.method: r for r in aggregate.aggregate_member('k1', '1', '', results)}
  assert list(rows) == ['none', 'learned', 'adapted']
  learned = rows['learned']
  task_deltas = (seed_acc[0] + seed_acc[1]) / 2 - none
  half = scipy.stats.t.ppf(0.975, 49) * task_deltas.std(ddof=1) / np.sqrt(50)
  np.testing.assert_allclose([learned.delta, learned.delta_lo, learned.delta_hi],
                             [task_deltas.mean(), task_deltas.mean() - half,
                              task_deltas.mean() + half])
  np.testing.assert_allclose(learned.seed_deltas, [(a - none).mean() for a in seed_acc])
  np.testing.assert_allclose(learned.seed_sd, np.std(learned.seed_deltas, ddof=1))
  assert learned.seeds == 2 and learned.num_tasks == 50
  assert learned.significant == (learned.delta_lo > 0 or learned.delta_hi < 0)
  assert rows['adapted'].seeds == 1 and np.isnan(rows['adapted'].seed_sd)
  assert rows['none'].delta == 0 and not rows['none'].significant
  contrasts = aggregate.contrast_rows('k1', '1', '', results)
  assert [(b, r.method) for b, r in contrasts] == [('learned', 'adapted')]  # no random_convnet
  np.testing.assert_allclose(contrasts[0][1].delta, 0.01)  # adapted - learned, seed 0 only
  img = np.zeros((4, 8, 8, 3))
  pairs = {m: (img, img) for m in ('none', 'duplicate', 'fixed', 'random_convnet', 'learned')}
  labels = [label for label, _ in aggregate.grid_rows({'k1': pairs, 'k5': pairs})]
  assert labels == ['k1: original', 'k1: fixed', 'k1: random_convnet', 'k1: learned',
                    'k5: original', 'k5: learned']
  with pytest.raises(ValueError, match='different numbers of tasks'):
    aggregate.aggregate_member('k1', '1', '', [
        _result({'none': none, 'learned': none}), _result({'none': none[:10],
                                                           'learned': none[:10]})])


@pytest.mark.slow
def test_runner_runs_skips_resumes_and_aggregates(tmp_path, monkeypatch):
  spec = _write_sweep(
      tmp_path / 'study.json',
      [{'name': 'k1', 'x': '1', 'overrides': ['task.k_shot=1']},
       {'name': 'k2', 'x': '2', 'overrides': ['task.k_shot=2']}],
      overrides=['task.n_way=2', 'eval.methods=none,learned,adapted', 'eval.val_every=0',
                 'eval.num_tasks=4', 'eval.batch_size=4', 'eval.adapt_steps=1'])
  root = str(tmp_path / 'runs')

  # Kill the first run right after its step-2 checkpoint (of 4 steps).
  real_save = train.Checkpoints.save_latest

  def save_then_die(self, step, state):
    real_save(self, step, state)
    if step == 2:
      raise KeyboardInterrupt('killed')

  monkeypatch.setattr(train.Checkpoints, 'save_latest', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    sweep_runner.run_sweep(spec, TINY, root, seeds=1)
  monkeypatch.setattr(train.Checkpoints, 'save_latest', real_save)
  first = os.path.join(root, 'study', 'k1', 'seed0')
  assert not sweep_runner.is_done(sweeps.plan(sweeps.load_sweep(spec), TINY, root, 1)[0])

  paths = sweep_runner.run_sweep(spec, TINY, root, seeds=1)
  with open(os.path.join(first, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  # Resumed at step 3 (a fresh start would have truncated everything and begun at 1).
  assert [r['step'] for r in lines if 'perf/compile_and_first_step_s' in r] == [1, 3]
  assert [r['step'] for r in lines if 'train/meta_loss' in r] == [1, 2, 3, 4]
  for member in ('k1', 'k2'):
    assert os.path.isfile(os.path.join(root, 'study', member, 'seed0', 'sweep_run.json'))

  text = _read(paths['results.md'])
  for x in ('1', '2'):
    for method in ('none', 'learned', 'adapted'):
      assert f'| {x} | {method} |' in text
    assert f'| {x} | adapted − learned |' in text
  rows = json.loads(_read(paths['aggregate.json']))['rows']
  assert [(r['member'], r['method']) for r in rows] == [
      (m, a) for m in ('k1', 'k2') for a in ('none', 'learned', 'adapted')]
  for name in ('deltas.png', 'augmentations.png'):
    with open(paths[name], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  # A rerun trains nothing and rewrites the same aggregate.
  def must_not_run(*args, **kwargs):
    raise AssertionError('a finished run was run again')

  monkeypatch.setattr(train, 'train_and_evaluate', must_not_run)
  os.remove(paths['results.md'])
  again = sweep_runner.run_sweep(spec, TINY, root, seeds=1)
  assert _read(again['results.md']) == text

  # A changed member is refused before anything runs, not mixed into old workdirs.
  changed = _write_sweep(tmp_path / 'study.json',
                         [{'name': 'k1', 'x': '1', 'overrides': ['task.k_shot=1',
                                                                 'inner.steps=5']}],
                         overrides=['task.n_way=2'])
  with pytest.raises(ConfigError, match='holds a run with a different config'):
    sweep_runner.run_sweep(changed, TINY, root, seeds=1)


def _started(workdir, config):
  """What train_and_evaluate writes before training: the workdir and its config.json."""
  workdir_lib.prepare_workdir(workdir, config)
  workdir_lib.write_config(workdir, config)


def test_a_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
  spec = _write_sweep(tmp_path / 'study.json',
                      [{'name': 'k1', 'overrides': ['task.k_shot=1']},
                       {'name': 'k2', 'overrides': ['task.k_shot=2']}])
  ran = []

  def fake_run(config, workdir):
    ran.append(config.task.k_shot)
    if config.task.k_shot == 1:
      raise NonFiniteLossError('Non-finite query_loss at meta-step 3')
    _started(workdir, config)
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(_result({'none': [0.5, 0.6, 0.7], 'learned': [0.6, 0.6, 0.8]}), f)

  monkeypatch.setattr(train, 'train_and_evaluate', fake_run)
  root = str(tmp_path / 'runs')
  with pytest.raises(SweepError, match=r'(?s)1 run\(s\).*k1 seed 0.*Non-finite'):
    sweep_runner.run_sweep(spec, TINY, root)
  assert ran == [1, 2]
  text = _read(os.path.join(root, 'study', 'results.md'))
  assert '**not finished**: k1 seed 0' in text
  assert '| k2 | learned | 66.67% | +6.67 pp' in text and '| k1 |' not in text
  with pytest.raises(SweepError, match=r'Every run of .* failed.*delete its'):
    sweep_runner.run_sweep(spec, TINY, str(tmp_path / 'other'), members=('k1',))


def test_a_finished_run_with_other_resumable_values_runs_again(tmp_path, monkeypatch):
  """More test tasks (a resumable key) must not be answered with the old results."""
  spec = _write_sweep(tmp_path / 'study.json', [{'name': 'k1', 'overrides': ['task.k_shot=1']}])
  calls = []

  def fake_run(config, workdir):
    _started(workdir, config)
    calls.append(config.eval.num_tasks)
    accs = [0.5] * config.eval.num_tasks
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(_result({'none': accs, 'learned': accs}), f)

  monkeypatch.setattr(train, 'train_and_evaluate', fake_run)
  root = str(tmp_path / 'runs')
  sweep_runner.run_sweep(spec, TINY, root)
  sweep_runner.run_sweep(spec, TINY, root)
  sweep_runner.run_sweep(spec, TINY, root, extra=('eval.num_tasks=9',))
  assert calls == [6, 9]


def test_a_run_finished_in_another_study_is_copied_not_rerun(tmp_path, monkeypatch):
  calls = []

  def fake_run(config, workdir):
    _started(workdir, config)
    calls.append((config.task.k_shot, config.task.n_way))
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(_result({'none': [0.5, 0.6], 'learned': [0.6, 0.6]}), f)

  monkeypatch.setattr(train, 'train_and_evaluate', fake_run)
  root = str(tmp_path / 'runs')
  support = _write_sweep(tmp_path / 'support.json', [
      {'name': 'k1', 'overrides': ['task.k_shot=1']},
      {'name': 'k2', 'overrides': ['task.k_shot=2']}], overrides=['task.n_way=3'])
  ways = _write_sweep(tmp_path / 'ways.json', [
      {'name': 'n2', 'overrides': ['task.n_way=2']},
      {'name': 'n3', 'overrides': ['task.n_way=3']}], overrides=['task.k_shot=2'])
  sweep_runner.run_sweep(support, TINY, root)
  paths = sweep_runner.run_sweep(ways, TINY, root)
  assert calls == [(1, 3), (2, 3), (2, 2)]  # n3 is support's k2
  copied = os.path.join(root, 'ways', 'n3', 'seed0')
  with open(os.path.join(copied, 'sweep_run.json')) as f:
    assert json.load(f)['copied_from'] == os.path.join(root, 'support', 'k2', 'seed0')
  assert _read(os.path.join(copied, 'results.json')) == _read(
      os.path.join(root, 'support', 'k2', 'seed0', 'results.json'))
  assert '| n3 | learned |' in _read(paths['results.md'])


def test_a_run_finished_before_a_key_was_added_is_still_done(tmp_path):
  """config.json of a run written before a schema key existed reads that key as its
  default (as a resume does), so the finished run is neither rerun nor left out."""
  run = sweeps.plan(sweeps.load_sweep('training_length'), os.path.join(
      REPO, 'configs', 'sweep_cpu.py'), str(tmp_path), 1)[0]
  os.makedirs(run.workdir)
  saved = json.loads(run.config.to_json())
  del saved['inner']['learn_synthetic_weight']  # as issue 15's code wrote it
  with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  with open(os.path.join(run.workdir, sweep_runner.DONE_FILE), 'w') as f:
    json.dump({'member': 'k1', 'seed': 0, 'seconds': 1.0}, f)
  assert sweep_runner.is_done(run)
  saved['inner']['synthetic_weight'] = 0.5  # a different value is a different run
  with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  assert not sweep_runner.is_done(run)


def test_results_header_shows_each_override_once_and_paths_below_the_cwd_relative(
    tmp_path, monkeypatch):
  # The runner's default eval.methods, then the study's own: only the one in effect.
  assert sweep_runner._last_per_key(('eval.methods=a,b', 'task.n_way=3', 'eval.methods=a')) == [
      'task.n_way=3', 'eval.methods=a']
  monkeypatch.chdir(tmp_path)
  assert sweep_runner._shown_path(str(tmp_path / 'study' / 'sweep.json')) == os.path.join(
      'study', 'sweep.json')
  assert sweep_runner._shown_path('/elsewhere/sweep.json') == '/elsewhere/sweep.json'
