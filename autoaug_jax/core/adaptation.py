"""Test-time augmenter adaptation: fine-tune the learned augmenter on each test task first.

Data flow: objective -> evaluation, where this is one more method. The
paper's Section 5.5 proposes it as the next step: a meta-trained augmenter
is tuned to the task distribution, not to the task at hand, and a test
task's support set is itself a small labelled dataset. `TestTimeAdapted`
wraps the learned augmenter. Given a support set S (class-major, N x K), it
cuts a pseudo-task out of S (the first ceil(K/2) shots of each class as
pseudo-support, the rest as pseudo-query), takes `steps` optimiser steps on the
augmenter's parameters against that pseudo-task's meta-objective (the same
Algorithm 1 as meta-training, through the same classifier and inner loop),
and then generates S' from the whole of S with the adapted parameters and
the same key as the unadapted augmenter, so that `adapted` vs `learned` is
a paired comparison of the adaptation alone.

With K = 1 there is nothing to hold out: the pseudo-query is the support
set itself, so the adaptation can only learn to keep S fittable.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from autoaug_jax.augmenters.base import Augmenter
from autoaug_jax.core import rng
from autoaug_jax.core.meta_step import OptimizerSettings, make_optimizer
from autoaug_jax.core.objective import Objective, support_query_outcome
from autoaug_jax.types import Constants, Params


def pseudo_task(images: jax.Array, labels: jax.Array, n_way: int, k_shot: int
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Splits a class-major support set into a pseudo-support and a pseudo-query set.

  Args:
    images: [N * K, H, W, 3], class c at rows c*K .. c*K + K - 1.
    labels: [N * K].

  Returns:
    pseudo-support images [N * ceil(K/2), H, W, 3] and labels, pseudo-query
    images [N * floor(K/2), H, W, 3] and labels (for K = 1: both the support set).
  """
  if k_shot == 1:
    return images, labels, images, labels
  keep = k_shot - k_shot // 2
  shaped = images.reshape(n_way, k_shot, *images.shape[1:])
  shaped_labels = labels.reshape(n_way, k_shot)

  def flat(x):
    return x.reshape(-1, *x.shape[2:])

  return (flat(shaped[:, :keep]), flat(shaped_labels[:, :keep]),
          flat(shaped[:, keep:]), flat(shaped_labels[:, keep:]))


@dataclasses.dataclass(frozen=True)
class TestTimeAdapted(Augmenter):
  """`objective.augmenter` with `steps` optimiser steps of per-task adaptation before it
  generates.

  Hashable (static under jit). `objective` is the run's (its augmenter is the
  one adapted; its classifier and inner loop score the pseudo-task).
  `optimizer` is the outer optimiser's kind and clipping at the adaptation's
  learning rate. Its `consts` are the run's whole `Constants`: the
  pseudo-task trains the classifier, which may have frozen weights of its own.
  """
  objective: Objective
  steps: int
  optimizer: OptimizerSettings

  @property
  def base(self) -> Augmenter:
    return self.objective.augmenter

  @property
  def factor(self) -> int:
    return self.base.factor

  @property
  def frozen(self) -> bool:
    return self.base.frozen

  @property
  def paired(self) -> bool:
    return self.base.paired

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    return self.base.init(key, image_shape)

  def trainable_mask(self, params: Params):
    return self.base.trainable_mask(params)

  def adapt(self, params: Params, images: jax.Array, labels: jax.Array, key: jax.Array,
            consts: Constants) -> tuple[Params, jax.Array]:
    """Adapted parameters, and the pseudo-query loss before each step [steps]."""
    task = self.objective.task
    ps_images, ps_labels, pq_images, pq_labels = pseudo_task(
        images, labels, task.n_way, task.k_shot)
    opt = make_optimizer(self.optimizer, self.base, params)

    def loss_fn(p, i):
      loss, _ = support_query_outcome(
          p, ps_images, ps_labels, pq_images, pq_labels, rng.task_keys(key, i),
          self.objective, consts)
      return loss

    def step(carry, i):
      p, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(p, i)
      updates, opt_state = opt.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                       jnp.arange(self.steps))
    return params, losses

  def augment(self, params: Params, images: jax.Array, labels: jax.Array, key: jax.Array,
              consts: Constants | None = None) -> tuple[jax.Array, jax.Array]:
    """As `Augmenter.augment`, after adapting `params` to (images, labels).

    `consts`: the run's whole `Constants` (see `method_constants`).
    """
    # Direct callers (example grids) may pass nothing or {}: no frozen weights.
    consts = consts if isinstance(consts, Constants) else Constants()
    adapted, _ = self.adapt(params, images, labels, rng.stream(key, 'adapt'), consts)
    return self.base.augment(adapted, images, labels, key, consts.augmenter)


def method_constants(consts: Constants) -> Constants:
  """The `consts` of the evaluation program for the adapted method: its augmenter
  slot carries the run's whole `Constants` (see `TestTimeAdapted`)."""
  return consts.replace(augmenter=consts)
