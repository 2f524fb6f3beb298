"""The synthetic images' weight in the inner loss (`inner.synthetic_weight`), fixed or learned.

Its meaning is checked at both ends (w = 1 is the paper's loss, w = 0 is the
`none` baseline), its meta-gradient against central finite differences in
float64 and its scan against a Python loop, and the options from the config
to the report.
"""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from test_meta_gradient import _flat, _problem, check_directional_derivatives, inner_problem

from autoaug_jax.augmenters.weighted import WEIGHT_LOGIT, SyntheticWeighted
from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate
from autoaug_jax.core import objective as objective_lib
from autoaug_jax.core import rng, sharding, tasks
from autoaug_jax.core.inner_loop import cross_entropy, train_classifier
from autoaug_jax.errors import ConfigError
from autoaug_jax.run import workdir as workdir_lib


def test_bad_weights_are_refused_in_one_line(tiny_config):
  for weight, learn, match in ((1.5, False, r'synthetic_weight=1.5 must be a number in \[0, 1\]'),
                               (1.0, True, r'start it inside \(0, 1\)'),
                               (0.0, True, r'start it inside \(0, 1\)')):
    config = tiny_config.copy_and_resolve_references()
    config.inner.synthetic_weight, config.inner.learn_synthetic_weight = weight, learn
    with pytest.raises(ConfigError, match=match):
      validate(config)
  config = tiny_config.copy_and_resolve_references()
  config.inner.synthetic_weight, config.inner.learn_synthetic_weight = 0.5, True
  config.augmenter.name = 'none'
  with pytest.raises(ConfigError, match='no synthetic images to weigh'):
    validate(config)


def test_the_weight_cannot_change_at_evaluation(tiny_config):
  for key, value in (('inner.synthetic_weight', 0.5), ('inner.learn_synthetic_weight', True)):
    with pytest.raises(ConfigError, match=f'--config.{key} cannot be overridden'):
      workdir_lib.apply_eval_overrides(tiny_config, {key: value})
  workdir_lib.apply_eval_overrides(tiny_config, {'inner.lr': 0.2})  # the rest of inner.* can


def test_only_a_weighted_run_changes_its_augmenter(tiny_config):
  assert not isinstance(builders.run_augmenter(tiny_config), SyntheticWeighted)  # as before
  tiny_config.inner.synthetic_weight = 0.25
  fixed = builders.run_augmenter(tiny_config)
  assert fixed.weight == 0.25 and not fixed.learned and fixed.factor == 1
  assert set(fixed.init(jax.random.key(0), (16, 16, 3))) == {'augmenter'}
  tiny_config.inner.learn_synthetic_weight = True
  learned = builders.run_augmenter(tiny_config)
  params = learned.init(jax.random.key(0), (16, 16, 3))
  np.testing.assert_allclose(learned.synthetic_weight(params), 0.25, rtol=1e-6)
  assert learned.trainable_mask(params)[WEIGHT_LOGIT]
  # A frozen augmenter with a learned weight still has something to train.
  frozen = SyntheticWeighted(base=dataclasses.replace(learned.base, frozen=True), weight=0.5,
                             learned=True)
  assert frozen.has_trainable_params(frozen.init(jax.random.key(0), (16, 16, 3)))


def test_the_weight_can_have_its_own_learning_rate(tiny_config):
  """With the augmenter's Adam lr the logit moves about lr per step at most; its own
  lr moves it faster and leaves the augmenter's steps alone. Without one, the
  optimiser state keeps the layout that earlier runs' checkpoints hold."""
  from autoaug_jax.core import meta_step
  tiny_config.inner.synthetic_weight, tiny_config.inner.learn_synthetic_weight = 0.5, True
  augmenter = builders.run_augmenter(tiny_config)
  params = augmenter.init(jax.random.key(0), (16, 16, 3))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  base = builders.optimizer_settings(tiny_config)
  assert base.weight_lr == 0.0
  shared = meta_step.make_optimizer(base, augmenter, params)
  tiny_config.outer.synthetic_weight_lr = 0.05
  validate(tiny_config)
  own = meta_step.make_optimizer(builders.optimizer_settings(tiny_config), augmenter, params)
  # Test-time adaptation keeps one optimiser (its lr is eval.adapt_lr).
  assert builders.optimizer_settings(tiny_config, lr=1e-3).weight_lr == 0.0
  for opt, weight_step in ((shared, base.lr), (own, 0.05)):
    updates, _ = opt.update(grads, opt.init(params), params)
    # Adam's first step is lr times the gradient's sign, leaf by leaf.
    np.testing.assert_allclose(updates[WEIGHT_LOGIT], -weight_step, rtol=1e-4)
    some = jax.tree.leaves(updates['augmenter'])[0]
    np.testing.assert_allclose(some, -base.lr, rtol=1e-4)
  old_layout = meta_step.make_optimizer(
      meta_step.OptimizerSettings(base.name, base.lr, base.grad_clip), augmenter, params)
  assert (jax.tree.structure(shared.init(params))
          == jax.tree.structure(old_layout.init(params)))
  assert (jax.tree.structure(own.init(params))
          != jax.tree.structure(shared.init(params)))
  with pytest.raises(ValueError, match='no learned synthetic weight'):
    meta_step.make_optimizer(dataclasses.replace(base, weight_lr=0.1), augmenter.base,
                             params['augmenter'])


def test_a_weight_lr_without_a_learned_weight_is_refused(tiny_config):
  tiny_config.outer.synthetic_weight_lr = 0.02
  with pytest.raises(ConfigError, match='add --config.inner.learn_synthetic_weight=True'):
    validate(tiny_config)
  tiny_config.outer.synthetic_weight_lr = -1.0
  with pytest.raises(ConfigError, match='must be a finite number >= 0'):
    validate(tiny_config)


def _task_losses(config, split, augmenter, params):
  """Query losses [4] of four training tasks with `augmenter` in the run's objective."""
  run = builders.meta_setup(config)
  objective = dataclasses.replace(run.objective, augmenter=augmenter)
  dev = tasks.to_device(split)
  key = jax.random.fold_in(rng.stream(rng.root_key(0), 'train'), 3)

  @jax.jit
  def losses(p):
    return objective_lib.batched_outcomes(p, dev, key, jnp.arange(4), objective,
                                          run.constants, mesh=sharding.make_mesh(1),
                                          task_chunk=1)[0]
  return np.asarray(losses(params)), run


@pytest.mark.slow
def test_weight_one_is_the_papers_loss_and_zero_is_no_augmentation(tiny_config, tiny_splits):
  tiny_config.inner.lr = 0.5
  split = tiny_splits['train']
  plain, run = _task_losses(tiny_config, split, builders.augmenter(tiny_config),
                            builders.meta_setup(tiny_config).initial_params)
  base, params = run.objective.augmenter, run.initial_params
  one, _ = _task_losses(tiny_config, split, SyntheticWeighted(base, 1.0), {'augmenter': params})
  np.testing.assert_allclose(one, plain, rtol=1e-5)
  zero, _ = _task_losses(tiny_config, split, SyntheticWeighted(base, 0.0), {'augmenter': params})
  none, _ = _task_losses(tiny_config, split, builders.augmenter(tiny_config, 'none'), {})
  np.testing.assert_allclose(zero, none, rtol=1e-5)
  half, _ = _task_losses(tiny_config, split, SyntheticWeighted(base, 0.5), {'augmenter': params})
  assert not np.allclose(half, plain, rtol=1e-4) and not np.allclose(half, none, rtol=1e-4)


@pytest.mark.slow
def test_learned_weight_meta_gradient_matches_central_finite_differences(tiny_config,
                                                                         tiny_splits):
  tiny_config.inner.lr = 0.5
  tiny_config.meta_batch_size = 2
  tiny_config.inner.synthetic_weight, tiny_config.inner.learn_synthetic_weight = 0.6, True
  with jax.enable_x64(True):
    meta_loss, params, _ = _problem(tiny_config, tiny_splits['train'])
    assert set(params) == {'augmenter', WEIGHT_LOGIT} and _flat(params).dtype == np.float64
    grads = jax.jit(jax.grad(meta_loss))(params)
    assert abs(float(grads[WEIGHT_LOGIT])) > 1e-8  # the weight gets a signal of its own
    loss_fn = jax.jit(meta_loss)
    # As in test_diffusion: the loss is piecewise smooth (the classifier's ReLUs and
    # max-pools switch inside the inner loop); at eps = 1e-6 one of the random
    # directions crossed a switch (2e-4 relative off), at 1e-7 none does, and a
    # float64 difference at 1e-7 is good to about 1e-5 relative.
    eps, rtol = 1e-7, 3e-5
    check_directional_derivatives(loss_fn, params, _flat(grads), np.random.default_rng(1),
                                  eps, rtol=rtol)
    up = float(loss_fn({**params, WEIGHT_LOGIT: params[WEIGHT_LOGIT] + eps}))  # the logit alone
    down = float(loss_fn({**params, WEIGHT_LOGIT: params[WEIGHT_LOGIT] - eps}))
    analytic = float(grads[WEIGHT_LOGIT])
    assert abs((up - down) / (2 * eps) - analytic) <= rtol * abs(analytic) + 1e-9


@pytest.mark.slow
def test_weighted_scan_equals_python_loop(tiny_config):
  clf, params0, x, y, xq = inner_problem(tiny_config)

  def query_loss(w, loop):
    weights = jnp.concatenate([jnp.ones(3), jnp.full(3, w)])
    if loop:
      params = params0
      for _ in range(4):
        grads = jax.grad(lambda p: cross_entropy(clf.logits(p, x), y, weights))(params)
        params = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
    else:
      params, _ = train_classifier(clf, params0, x, y, steps=4, lr=0.3, remat=True,
                                   weights=weights)
    return cross_entropy(clf.logits(params, xq), y)

  l_scan, g_scan = jax.value_and_grad(query_loss)(0.3, False)
  l_loop, g_loop = jax.value_and_grad(query_loss)(0.3, True)
  np.testing.assert_allclose(l_scan, l_loop, rtol=1e-5)
  assert abs(float(g_loop)) > 0
  np.testing.assert_allclose(g_scan, g_loop, rtol=1e-4)


@pytest.mark.slow
def test_a_run_learns_its_weight_and_reports_it(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'autoaug_jax.main', f'--config={REPO}/configs/tiny.py',
       f'--workdir={tmp_path}', "--config.eval.methods=('none','fixed','learned')",
       '--config.inner.synthetic_weight=0.5', '--config.inner.learn_synthetic_weight=True',
       '--config.outer.synthetic_weight_lr=0.1'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  weights = [d['train/synthetic_weight'] for d in lines if 'train/synthetic_weight' in d]
  assert len(weights) == 4 and weights[0] == pytest.approx(0.5, rel=1e-6)
  assert len(set(weights)) > 1  # it moved
  report = (tmp_path / 'report.md').read_text()
  assert '- **synthetic weight**: learned (from 0.5, lr 0.1): 0.' in report
  assert '| fixed |' in report and '| learned |' in report
