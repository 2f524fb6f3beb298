"""The meta-step: the meta-gradient of the mean query loss, and one optimiser update.

Data flow: objective (per task) -> meta-step (this module) -> evaluation.
`make_meta_step` runs `objective.batched_outcomes` for a meta-batch of B
tasks sharded over the device mesh, averages the query losses,
differentiates through everything (sampling aside) into the augmenter's
parameters and applies one optax update: one `jit`, state donated.
`MetaSetup` holds the pieces a run is assembled from (built from a config by
`config.builders.meta_setup`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from autoaug_jax.augmenters import weighted
from autoaug_jax.core import rng
from autoaug_jax.core.objective import Objective, batched_outcomes
from autoaug_jax.core.sharding import compiler_options, put_replicated, replicated
from autoaug_jax.core.tasks import DeviceSplit
from autoaug_jax.types import Constants, Params


@struct.dataclass
class MetaState:
  """Everything a resumed run needs: step, augmenter params, optimiser state, root key.

  `key` holds raw key data (uint32 [2]) so that checkpoints stay plain arrays.
  """
  step: jax.Array
  params: Params
  opt_state: Any
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The outer optimiser: 'adam' or 'sgd' at `lr`, global-norm clipping at
  `grad_clip` (0: off). Also test-time adaptation's, with its own lr."""
  name: str
  lr: float
  grad_clip: float
  # The learned synthetic weight's logit at its own lr (0: at `lr`, with the rest).
  weight_lr: float = 0.0


def make_optimizer(settings: OptimizerSettings, augmenter, params: Params
                   ) -> optax.GradientTransformation:
  """Adam or SGD with global-norm clipping; frozen leaves get exactly zero update.

  Clipping off is an identity in the same chain, so that the optimiser state has one
  layout whatever `grad_clip` is and a run can resume with clipping turned on or off.
  With `weight_lr`, a learned synthetic weight's logit gets its own optimiser
  (clipped on its own): Adam moves a leaf by about lr per step at most, so at
  the augmenter's lr the logit could barely move in a run. Only then does the
  state gain that group, so runs without it keep their layout.
  """
  def optimizer(lr):
    opt = {'adam': optax.adam, 'sgd': optax.sgd}[settings.name](lr)
    clip = settings.grad_clip
    return optax.chain(optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(), opt)

  labels = jax.tree.map(lambda t: 'train' if t else 'freeze', augmenter.trainable_mask(params))
  transforms = {'train': optimizer(settings.lr), 'freeze': optax.set_to_zero()}
  if settings.weight_lr > 0:
    if not (isinstance(labels, dict) and labels.get(weighted.WEIGHT_LOGIT) == 'train'):
      raise ValueError('weight_lr is set but the augmenter has no learned synthetic weight.')
    labels = {**labels, weighted.WEIGHT_LOGIT: 'weight'}
    transforms['weight'] = optimizer(settings.weight_lr)
  return optax.multi_transform(transforms, labels)


def init_params(augmenter, image_shape: tuple[int, int, int], seed: int) -> Params:
  """The augmenter's initial parameters, a pure function of the run seed."""
  return augmenter.init(rng.stream(rng.root_key(seed), 'augmenter_init'), image_shape)


def init_state(params: Params, optimizer: optax.GradientTransformation, seed: int,
               mesh: Mesh) -> MetaState:
  """Fresh state from initial parameters, placed replicated on the mesh (the layout
  `meta_step` returns, so the first and later steps share one compiled program).

  The parameters are copied: `meta_step` donates the state, and the caller's
  initial parameters stay valid.
  """
  params = jax.tree.map(jnp.array, params)
  state = MetaState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    key=jax.random.key_data(rng.root_key(seed)))
  return put_replicated(state, mesh)


def make_meta_step(objective: Objective, optimizer: optax.GradientTransformation, mesh: Mesh,
                   meta_batch_size: int, task_chunk: int = 0):
  """Returns the compiled `meta_step(state, split, consts) -> (state, metrics)`.

  `consts`: the frozen weights placed on the mesh (`MetaSetup.placed_constants`).
  Task keys are `fold_in(stream(root, 'train'), step)` split per task, so the
  step depends on nothing but its arguments (resume-safe). `state` is donated.
  `task_chunk`: tasks vmapped together per device (`batched_outcomes`).
  """
  def meta_loss(params, split, key, consts):
    losses, metrics = batched_outcomes(params, split, key, jnp.arange(meta_batch_size),
                                       objective, consts, mesh=mesh, task_chunk=task_chunk)
    return losses.mean(), metrics

  def meta_step(state: MetaState, split: DeviceSplit, consts: Constants):
    key = jax.random.fold_in(rng.stream(jax.random.wrap_key_data(state.key), 'train'),
                             state.step)
    (loss, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(
        state.params, split, key, consts)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {name: value.mean() for name, value in metrics.items()}
    out['meta_loss'] = loss
    out['grad_norm'] = optax.global_norm(grads)
    out['update_norm'] = optax.global_norm(updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

  rep = replicated(mesh)
  return jax.jit(meta_step, donate_argnums=(0,), in_shardings=(rep, rep, rep),
                 out_shardings=(rep, rep), compiler_options=compiler_options(mesh))


@dataclasses.dataclass(frozen=True)
class MetaSetup:
  """The pieces one run (or benchmark) is assembled from."""
  objective: Objective
  optimizer: optax.GradientTransformation
  initial_params: Params  # init_params(augmenter, image shape, seed), computed once
  seed: int
  constants: Constants  # the frozen weights as host arrays
  task_chunk: int = 0  # tasks vmapped together per device

  @property
  def augmenter(self):
    return self.objective.augmenter

  @property
  def classifier(self):
    return self.objective.classifier

  def init_state(self, mesh: Mesh) -> MetaState:
    return init_state(self.initial_params, self.optimizer, self.seed, mesh)

  def placed_constants(self, mesh: Mesh) -> Constants:
    """The frozen weights, replicated on the mesh (place once per run)."""
    return put_replicated(self.constants, mesh)

  def meta_step(self, mesh: Mesh, meta_batch_size: int):
    return make_meta_step(self.objective, self.optimizer, mesh, meta_batch_size,
                          self.task_chunk)
