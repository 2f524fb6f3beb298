"""The meta-gradient: exact (finite differences), and equal across equivalent programs.

Checks the claims of core/inner_loop.py and core/objective.py: differentiating the
scan equals differentiating a plain Python loop; remat changes memory, not
numbers; vmap over tasks equals a loop over tasks; a first-order
approximation would give the augmenter no gradient at all.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoaug_jax.config import builders
from autoaug_jax.core import objective, rng, sharding, tasks
from autoaug_jax.core.inner_loop import cross_entropy, train_classifier


def _problem(config, split, remat=None):
  """(meta_loss(params) -> mean query loss, initial params, setup) on the tiny train split."""
  mesh = sharding.make_mesh(1)
  dev = tasks.to_device(split)
  if remat is not None:
    config.inner.remat = remat
  run = builders.meta_setup(config)
  key = jax.random.fold_in(rng.stream(rng.root_key(0), 'train'), 7)

  def meta_loss(params):
    losses, _ = objective.batched_outcomes(
        params, dev, key, jnp.arange(config.meta_batch_size), run.objective, run.constants,
        mesh=mesh, task_chunk=run.task_chunk)
    return losses.mean()

  return meta_loss, run.initial_params, run


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def check_directional_derivatives(loss_fn, params, flat_grad, rs, eps, trials=3, rtol=1e-6):
  """g . d against central differences of `loss_fn` along random directions d (float64)."""
  for trial in range(trials):
    direction = jax.tree.map(lambda p: jnp.asarray(rs.normal(size=p.shape)), params)
    plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
    fd = (float(loss_fn(plus)) - float(loss_fn(minus))) / (2 * eps)
    analytic = float(flat_grad @ _flat(direction))
    assert abs(fd - analytic) <= rtol * abs(analytic) + 1e-9, (trial, fd, analytic)


def test_meta_gradient_matches_central_finite_differences(tiny_config, tiny_splits):
  tiny_config.inner.lr = 0.5  # a few inner steps that move the classifier noticeably
  with jax.enable_x64(True):
    meta_loss, params, _ = _problem(tiny_config, tiny_splits['train'])
    assert _flat(params).dtype == np.float64
    loss_fn = jax.jit(meta_loss)
    grads = jax.jit(jax.grad(meta_loss))(params)
    g = _flat(grads)
    assert np.linalg.norm(g) > 1e-6  # the augmenter does get a signal
    eps = 1e-6
    check_directional_derivatives(loss_fn, params, g, np.random.default_rng(0), eps)
    # Single coordinates of both layers (encoder and decoder).
    leaves, treedef = jax.tree.flatten(params)
    for leaf_index in range(len(leaves)):
      for flat_index in (0, leaves[leaf_index].size // 2):
        bumped = [np.array(x) for x in leaves]
        bumped[leaf_index].flat[flat_index] += eps
        up = float(loss_fn(jax.tree.unflatten(treedef, bumped)))
        bumped[leaf_index].flat[flat_index] -= 2 * eps
        down = float(loss_fn(jax.tree.unflatten(treedef, bumped)))
        analytic = float(np.ravel(jax.tree.leaves(grads)[leaf_index])[flat_index])
        assert abs((up - down) / (2 * eps) - analytic) <= 1e-6 * abs(analytic) + 1e-9


def _python_loop(classifier, params, features, labels, steps, lr):
  losses = []
  for _ in range(steps):
    loss, grads = jax.value_and_grad(
        lambda p: cross_entropy(classifier.logits(p, features), labels))(params)
    params = jax.tree.map(lambda w, g: w - lr * g, params, grads)
    losses.append(loss)
  return params, jnp.stack(losses)


def inner_problem(config):
  """(classifier, its initial params, 6 training inputs, their labels, 6 query inputs)."""
  clf = builders.classifier(config)
  params0 = clf.init(jax.random.key(0), (16, 16, 3), {})
  x = jax.random.uniform(jax.random.key(1), (6, 16, 16, 3)) * 2 - 1
  y = jnp.array([0, 1, 2, 0, 1, 2])
  xq = jax.random.uniform(jax.random.key(2), (6, 16, 16, 3)) * 2 - 1
  return clf, params0, x, y, xq


def test_scan_equals_python_loop_values_and_gradients(tiny_config):
  clf, params0, x, y, xq = inner_problem(tiny_config)

  def query_loss(features, loop):
    if loop:
      params, losses = _python_loop(clf, params0, features, y, 4, 0.3)
    else:
      params, losses = train_classifier(clf, params0, features, y, steps=4, lr=0.3, remat=False)
    return cross_entropy(clf.logits(params, xq), y), losses

  (l_scan, losses_scan), g_scan = jax.value_and_grad(query_loss, has_aux=True)(x, False)
  (l_loop, losses_loop), g_loop = jax.value_and_grad(query_loss, has_aux=True)(x, True)
  np.testing.assert_allclose(losses_scan, losses_loop, rtol=1e-5)
  np.testing.assert_allclose(l_scan, l_loop, rtol=1e-5)
  assert float(jnp.abs(g_loop).max()) > 0
  np.testing.assert_allclose(g_scan, g_loop, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_remat_changes_nothing(tiny_config, tiny_splits):
  on, params, _ = _problem(tiny_config, tiny_splits['train'], remat=True)
  off, _, _ = _problem(tiny_config, tiny_splits['train'], remat=False)
  l_on, g_on = jax.jit(jax.value_and_grad(on))(params)
  l_off, g_off = jax.jit(jax.value_and_grad(off))(params)
  np.testing.assert_allclose(l_on, l_off, rtol=1e-6)
  np.testing.assert_allclose(_flat(g_on), _flat(g_off), rtol=1e-4, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize('task_chunk', [0, 1, 2])
def test_vmap_over_tasks_equals_loop_over_tasks(tiny_config, tiny_splits, task_chunk):
  """task_chunk 0: one vmap over all tasks; 1: one task at a time; 2: chunks of 2 (and 1 left)."""
  tiny_config.meta_batch_size = 3
  tiny_config.task_chunk = task_chunk
  meta_loss, params, run = _problem(tiny_config, tiny_splits['train'])
  dev = tasks.to_device(tiny_splits['train'])
  key = jax.random.fold_in(rng.stream(rng.root_key(0), 'train'), 7)

  def looped(p):
    losses = []
    for i in range(3):
      loss, _ = objective.task_outcome(p, dev, rng.task_keys(key, i), run.objective,
                                       run.constants)
      losses.append(loss)
    return jnp.stack(losses).mean()

  l_vmap, g_vmap = jax.jit(jax.value_and_grad(meta_loss))(params)
  l_loop, g_loop = jax.jit(jax.value_and_grad(looped))(params)
  np.testing.assert_allclose(l_vmap, l_loop, rtol=1e-6)
  np.testing.assert_allclose(_flat(g_vmap), _flat(g_loop), rtol=1e-4, atol=1e-8)


@pytest.mark.slow
def test_first_order_approximation_gives_zero_augmenter_gradient(tiny_config, tiny_splits):
  """Why there is no first-order option: S' reaches the query loss only via inner gradients."""
  import autoaug_jax.core.inner_loop as inner

  def first_order(classifier, params, features, labels, *, steps, lr, remat, unroll=False,
                  weights=None):
    def step(p, _):
      loss, g = jax.value_and_grad(
          lambda q: cross_entropy(classifier.logits(q, features), labels, weights))(p)
      return jax.tree.map(lambda w, gi: w - lr * jax.lax.stop_gradient(gi), p, g), loss
    return jax.lax.scan(step, params, None, length=steps)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(inner, 'train_classifier', first_order)
    mp.setattr(objective, 'train_classifier', first_order)
    meta_loss, params, _ = _problem(tiny_config, tiny_splits['train'])
    grads = jax.grad(meta_loss)(params)
  assert np.all(_flat(grads) == 0.0)
  exact, params, _ = _problem(tiny_config, tiny_splits['train'])
  assert np.abs(_flat(jax.grad(exact)(params))).max() > 0


def test_objective_is_hashable_and_static(tiny_config):
  """jit closes over the objective: equal settings must hash (and compare) equal."""
  a = builders.meta_setup(tiny_config).objective
  b = dataclasses.replace(a, task=builders.task_spec(tiny_config),
                          inner=builders.inner_loop(tiny_config))
  assert hash(a) == hash(b) and a == b
  assert a != dataclasses.replace(a, inner=dataclasses.replace(a.inner, steps=4))


@pytest.mark.slow
@pytest.mark.parametrize('size', [12, 84])
def test_other_image_sizes_run_end_to_end(tiny_config, size):
  """Any multiple of 4 works: the augmenter halves and doubles, the classifier floors pools."""
  tiny_config.image_size = size
  tiny_config.data.images_per_class = 4
  tiny_config.task.k_shot, tiny_config.task.q_query = 1, 1
  tiny_config.inner.steps = 1
  split = builders.load_data_split(tiny_config.data, 'train', size)
  assert split.images.shape[1:] == (size, size, 3)
  meta_loss, params, _ = _problem(tiny_config, split)
  loss, grads = jax.jit(jax.value_and_grad(meta_loss))(params)
  assert np.isfinite(float(loss)) and np.abs(_flat(grads)).max() > 0
