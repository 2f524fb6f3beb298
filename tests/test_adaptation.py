"""Test-time augmenter adaptation: the pseudo-task split and the adaptation step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autoaug_jax.config import builders
from autoaug_jax.core import adaptation, rng, tasks
from autoaug_jax.core.meta_step import OptimizerSettings
from autoaug_jax.core.objective import support_query_outcome


def test_pseudo_task_holds_out_the_last_shots_of_each_class():
  n, k = 3, 5
  images = jnp.arange(n * k, dtype=jnp.float32)[:, None, None, None] * jnp.ones((1, 2, 2, 3))
  labels = jnp.repeat(jnp.arange(n), k)
  ps_x, ps_y, pq_x, pq_y = adaptation.pseudo_task(images, labels, n, k)
  assert ps_x.shape == (9, 2, 2, 3) and pq_x.shape == (6, 2, 2, 3)
  np.testing.assert_array_equal(ps_x[:, 0, 0, 0], [0, 1, 2, 5, 6, 7, 10, 11, 12])
  np.testing.assert_array_equal(pq_x[:, 0, 0, 0], [3, 4, 8, 9, 13, 14])
  np.testing.assert_array_equal(ps_y, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(pq_y, [0, 0, 1, 1, 2, 2])
  # K = 1: nothing to hold out, the support set is both.
  one = adaptation.pseudo_task(images[::k], labels[::k], n, 1)
  for got, want in zip(one, (images[::k], labels[::k]) * 2, strict=True):
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_adaptation_takes_meta_gradient_steps_on_the_pseudo_task(tiny_config, tiny_splits):
  """One SGD step equals params - lr * grad of the pseudo-task's query loss, computed
  independently; frozen leaves stay; S' is the base augmenter's with the adapted
  parameters and the unadapted augmenter's key."""
  run = builders.meta_setup(tiny_config)
  spec = run.objective.task
  split = tasks.to_device(tiny_splits['train'], None)
  task = tasks.sample_task(split, jax.random.key(1), n_way=spec.n_way, k_shot=spec.k_shot,
                           q_query=spec.q_query)
  consts = jax.device_put(run.constants)
  lr = 0.05
  method = adaptation.TestTimeAdapted(run.objective, steps=1,
                                      optimizer=OptimizerSettings('sgd', lr, grad_clip=0.0))
  key = jax.random.key(7)
  params = run.initial_params
  adapted, losses = jax.jit(method.adapt)(params, task.support_images, task.support_labels,
                                          rng.stream(key, 'adapt'), consts)

  ps_x, ps_y, pq_x, pq_y = adaptation.pseudo_task(task.support_images, task.support_labels,
                                                  spec.n_way, spec.k_shot)

  def pseudo_loss(p):
    return support_query_outcome(
        p, ps_x, ps_y, pq_x, pq_y, rng.task_keys(rng.stream(key, 'adapt'), 0),
        run.objective, consts)[0]

  loss, grads = jax.jit(jax.value_and_grad(pseudo_loss))(params)
  np.testing.assert_allclose(losses[0], loss, rtol=1e-6)
  assert optax.global_norm(grads) > 0
  expected = jax.tree.map(lambda p, g: p - lr * g, params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
               adapted, expected)

  synthetic, labels = jax.jit(method.augment)(params, task.support_images,
                                              task.support_labels, key, consts)
  want, want_labels = run.augmenter.augment(expected, task.support_images,
                                            task.support_labels, key, {})
  np.testing.assert_allclose(synthetic, want, atol=1e-5)
  np.testing.assert_array_equal(labels, want_labels)

  # A frozen augmenter's leaves are never moved.
  frozen = adaptation.TestTimeAdapted(
      dataclasses.replace(run.objective,
                          augmenter=dataclasses.replace(run.augmenter, frozen=True)),
      steps=2, optimizer=OptimizerSettings('adam', lr, grad_clip=1.0))
  kept, _ = jax.jit(frozen.adapt)(params, task.support_images, task.support_labels, key, consts)
  jax.tree.map(np.testing.assert_array_equal, kept, params)


def test_adapted_is_evaluated_only_for_a_trainable_augmenter(tiny_config):
  with tiny_config.unlocked():
    tiny_config.eval.methods = ('none', 'learned', 'adapted')
  run = builders.meta_setup(tiny_config)
  methods = builders.eval_methods(tiny_config, run, run.initial_params)
  assert list(methods) == ['none', 'learned', 'adapted']
  assert isinstance(methods['adapted'][0], adaptation.TestTimeAdapted)
  assert methods['adapted'][0].steps == tiny_config.eval.adapt_steps
  with tiny_config.unlocked():
    tiny_config.augmenter.frozen = True
  run = builders.meta_setup(tiny_config)
  assert list(builders.eval_methods(tiny_config, run, run.initial_params)) == ['none', 'convnet']
