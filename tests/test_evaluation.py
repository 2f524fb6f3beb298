"""Paired evaluation and its statistics, and the report files."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.stats

from autoaug_jax import statistics
from autoaug_jax.config import builders
from autoaug_jax.core import evaluation, meta_step, sharding, tasks
from autoaug_jax.run import figures, report
from autoaug_jax.types import Constants

NO_CONSTS = Constants()


def _with(run, name, config):
  """The run's objective with augmenter `name`."""
  return dataclasses.replace(run.objective, augmenter=builders.augmenter(config, name))


def test_summary_matches_paired_t_interval():
  rs = np.random.default_rng(0)
  base = rs.uniform(0.3, 0.9, 50)
  better = np.clip(base + rs.normal(0.05, 0.05, 50), 0, 1)
  same = base + rs.normal(0, 0.05, 50)
  rows = {r.method: r for r in statistics.summarize(
      {'none': base, 'better': better, 'same': same})}
  ci = scipy.stats.ttest_rel(better, base).confidence_interval(0.95)
  assert rows['better'].delta == pytest.approx((better - base).mean())
  assert rows['better'].delta_lo == pytest.approx(ci.low)
  assert rows['better'].delta_hi == pytest.approx(ci.high)
  assert rows['better'].significant and not rows['same'].significant
  assert rows['none'].delta == 0 and not rows['none'].significant
  acc_ci = scipy.stats.ttest_1samp(base, 0).confidence_interval(0.95)
  assert rows['none'].acc_ci == pytest.approx((acc_ci.high - acc_ci.low) / 2)


def test_summary_refuses_unpaired_inputs():
  with pytest.raises(ValueError, match="baseline 'none' was not evaluated"):
    statistics.summarize({'fixed': np.ones(3)})
  with pytest.raises(ValueError, match='paired deltas need the same tasks'):
    statistics.summarize({'none': np.ones(3), 'fixed': np.ones(4)})


@pytest.fixture
def eval_setup(tiny_config, tiny_splits):
  mesh = sharding.make_mesh(1)
  dev = tasks.to_device(tiny_splits['test'])
  run = builders.meta_setup(tiny_config)
  return tiny_config, mesh, dev, run


def test_methods_see_the_same_tasks(eval_setup):
  config, mesh, dev, run = eval_setup
  stream = evaluation.eval_stream(0, 'test')
  seen = {}
  for name in ('none', 'duplicate', 'convnet'):
    aug = builders.augmenter(config, name)
    params = meta_step.init_params(aug, run.objective.task.image_shape, 0)
    seen[name] = evaluation.example_augmentations(aug, params, dev, run.objective.task, stream,
                                                  index=3)
  np.testing.assert_array_equal(seen['none'][0], seen['duplicate'][0])
  np.testing.assert_array_equal(seen['none'][0], seen['convnet'][0])
  np.testing.assert_array_equal(seen['duplicate'][1], seen['duplicate'][0])
  assert seen['none'][1].shape[0] == 0


@pytest.mark.slow
def test_results_do_not_depend_on_batching(eval_setup):
  config, mesh, dev, run = eval_setup
  stream = evaluation.eval_stream(0, 'test')
  none = _with(run, 'none', config)
  one_batch = evaluation.evaluate(none, {}, dev, mesh, stream, 5, 5, consts=NO_CONSTS)
  batched = evaluation.evaluate(none, {}, dev, mesh, stream, 5, 2, consts=NO_CONSTS)
  np.testing.assert_array_equal(one_batch.accuracy, batched.accuracy)
  assert one_batch.accuracy.shape == (5,) and not one_batch.diverged.any()


def test_report_files(tmp_path):
  rs = np.random.default_rng(1)
  accs = {'none': rs.uniform(size=20), 'learned': rs.uniform(size=20)}
  rows = statistics.summarize(accs)
  examples = {m: (rs.uniform(size=(4, 8, 8, 3)), rs.uniform(size=(8, 8, 8, 3))) for m in accs}
  examples['none'] = (examples['none'][0], np.zeros((0, 8, 8, 3)))
  paths = report.write_report(str(tmp_path), rows, accs, examples,
                              header={'task': '3-way 1-shot'}, config_json='{}')
  text = (tmp_path / 'report.md').read_text()
  assert '| learned |' in text and '(baseline)' in text and '3-way 1-shot' in text
  results = json.loads((tmp_path / 'results.json').read_text())
  assert len(results['per_task_accuracy']['learned']) == 20
  for name in ('deltas.png', 'augmentations.png'):
    assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG', paths[name]
  grid = figures.augmentation_grid(examples)
  assert grid.shape == (4 * 10, 4 * 10, 3) and grid.dtype == np.uint8
  # The 'none' synthetic row is blank (white): nothing was generated.
  assert (grid[10:20] == 255).all()


def test_eval_fn_compiles_once_per_method(eval_setup):
  config, mesh, dev, run = eval_setup
  none = _with(run, 'none', config)
  fn = evaluation.make_eval_fn(none, mesh)
  stream = evaluation.eval_stream(0, 'test')
  evaluation.evaluate(none, {}, dev, mesh, stream, 6, 2, eval_fn=fn, consts=NO_CONSTS)
  assert fn._cache_size() == 1


def test_eval_fn_is_compiled_with_the_cpu_compiler_options(eval_setup, monkeypatch):
  config, mesh, dev, run = eval_setup
  none = _with(run, 'none', config)
  monkeypatch.setattr(sharding, '_CPU_COMPILER_OPTIONS', {'xla_cpu_no_such_option': True})
  with pytest.raises(Exception, match='xla_cpu_no_such_option'):
    evaluation.evaluate(none, {}, dev, mesh, evaluation.eval_stream(0, 'test'), 2, 2,
                        consts=NO_CONSTS)


@pytest.mark.slow
def test_a_diverged_classifier_is_counted_not_scored(eval_setup, tmp_path):
  """NaN logits would be 'predictions' of whatever argmax makes of them: such tasks
  score 0, are counted and appear in the report."""
  config, mesh, dev, run = eval_setup
  stream = evaluation.eval_stream(0, 'test')
  # The inner SGD diverges.
  exploding = dataclasses.replace(run.objective,
                                  inner=dataclasses.replace(run.objective.inner, lr=1e30))
  bad = evaluation.evaluate(exploding, run.initial_params, dev, mesh, stream, 4, 4,
                            consts=NO_CONSTS)
  assert bad.diverged.all() and bad.num_diverged == 4
  np.testing.assert_array_equal(bad.accuracy, np.zeros(4))
  good = evaluation.evaluate(run.objective, run.initial_params, dev, mesh, stream, 4, 4,
                             consts=NO_CONSTS)
  assert not good.diverged.any()
  accs = {'none': good.accuracy, 'learned': bad.accuracy}
  rows = statistics.summarize(accs, diverged={'learned': 4})
  assert [r.diverged for r in rows] == [0, 4]
  examples = {m: (np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3))) for m in accs}
  report.write_report(str(tmp_path), rows, accs, examples, header={}, config_json='{}',
                      diverged={'none': [], 'learned': [0, 1, 2, 3]})
  text = (tmp_path / 'report.md').read_text()
  assert '| significant | diverged tasks |' in text and '| learned | 0.00% ± 0.00 |' in text
  assert 'non-finite on some tasks, which score 0: learned 4 of 4.' in text
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['per_task_diverged'] == {'none': [], 'learned': [0, 1, 2, 3]}


def test_the_dataset_line_names_a_spurious_support_colour():
  """The colour changes what every number means, so the report says it outside the
  config dump, and an augmenter trained with it and evaluated without it shows both
  datasets (evaluate_checkpoint compares these names)."""
  from autoaug_jax.config.schema import base_config
  from autoaug_jax.run import evaluate
  data = base_config().data
  plain = evaluate.dataset_name(data)
  assert plain == data.name and 'spurious' not in plain
  data.spurious = 0.5
  assert evaluate.dataset_name(data) == (
      f"{plain}, with a spurious support colour of strength 0.5 (each class's support "
      'backgrounds tinted its own colour; queries untinted)')
