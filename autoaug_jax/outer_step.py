"""Outer step: the meta-gradient of the query loss through the inner loop, vmapped over tasks.

Data flow: task sampler -> augmenter -> inner loop -> outer step (this
module) -> evaluation. `task_outcome` runs Algorithm 1 of the paper for one
task: sample S and Q, generate S' = A(S), train a freshly initialised
classifier on S u S' for I steps, and score it on Q. `make_meta_step` vmaps
it over a meta-batch of B tasks sharded over the device mesh, averages the
query losses, differentiates through everything into the augmenter's
parameters and applies one optax update: one `jit`, state donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from autoaug_jax import rng
from autoaug_jax.augmenters import Augmenter, make_augmenter
from autoaug_jax.classifiers import Classifier, make_classifier
from autoaug_jax.inner_loop import accuracy, cross_entropy, train_classifier
from autoaug_jax.sharding import TASK_AXIS, replicated
from autoaug_jax.tasks import DeviceSplit, sample_task

Params = Any


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Static shape and inner-loop settings of a task (hashable: closed over by jit)."""
  n_way: int
  k_shot: int
  q_query: int
  image_size: int
  inner_steps: int
  inner_lr: float
  remat: bool = True
  spurious: float = 0.0
  unroll: bool = False  # benchmark only: lets XLA's cost analysis count every step
  # Tasks vmapped together on one device; the rest run one chunk after another.
  task_chunk: int = 0

  @classmethod
  def from_config(cls, config) -> TaskSpec:
    return cls(n_way=config.task.n_way, k_shot=config.task.k_shot,
               q_query=config.task.q_query, image_size=config.image_size,
               inner_steps=config.inner.steps, inner_lr=config.inner.lr,
               remat=config.inner.remat,
               spurious=config.data.spurious, task_chunk=config.task_chunk)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)


@struct.dataclass
class MetaState:
  """Everything a resumed run needs: step, augmenter params, optimiser state, root key.

  `key` holds raw key data (uint32 [2]) so that checkpoints stay plain arrays.
  """
  step: jax.Array
  params: Params
  opt_state: Any
  key: jax.Array


def task_outcome(aug_params: Params, split: DeviceSplit, keys: dict[str, jax.Array], *,
                 augmenter: Augmenter, classifier: Classifier, spec: TaskSpec,
                 consts: Params) -> tuple[jax.Array, dict]:
  """Algorithm 1 for one task; returns (query loss, flat dict of scalar metrics).

  `consts` holds the frozen weights, passed in rather than closed over:
  {'classifier': classifier.constants(seed) (a ResNet's pre-trained weights,
  {} for the ConvNet), 'augmenter': augmenter.constants(seed) (Stable
  Diffusion's, {} for the others)}.
  """
  task = sample_task(split, keys['sample'], n_way=spec.n_way, k_shot=spec.k_shot,
                     q_query=spec.q_query, spurious=spec.spurious)
  return support_query_outcome(aug_params, task.support_images, task.support_labels,
                               task.query_images, task.query_labels, keys, augmenter=augmenter,
                               classifier=classifier, spec=spec, consts=consts)


def support_query_outcome(aug_params: Params, support_images: jax.Array,
                          support_labels: jax.Array, query_images: jax.Array,
                          query_labels: jax.Array, keys: dict[str, jax.Array], *,
                          augmenter: Augmenter, classifier: Classifier, spec: TaskSpec,
                          consts: Params) -> tuple[jax.Array, dict]:
  """Algorithm 1 on a given support set [n, H, W, 3] / [n] and query set [q, H, W, 3] / [q].

  Uses keys['augment'] and keys['init']; also the pseudo-task objective of
  test-time adaptation (`adaptation.py`), whose support and query sets are
  both cut from a test task's support set.
  """
  synthetic, synthetic_labels = augmenter.augment(
      aug_params, support_images, support_labels, keys['augment'], consts['augmenter'])
  clf_consts = consts['classifier']
  # The classifier's fixed part runs once per task, outside the inner scan. S and
  # Q go through it together; S' separately, so that the backward pass through
  # it (the meta-gradient's way to the augmenter) covers S' only.
  n_support = support_images.shape[0]
  data_features = classifier.embed(clf_consts, jnp.concatenate([support_images, query_images]))
  features = data_features[:n_support]
  if synthetic.shape[0]:
    features = jnp.concatenate([features, classifier.embed(clf_consts, synthetic)])
  labels = jnp.concatenate([support_labels, synthetic_labels])
  params0 = classifier.init(keys['init'], spec.image_shape, clf_consts)
  params, inner_losses = train_classifier(
      classifier, params0, features, labels,
      steps=spec.inner_steps, lr=spec.inner_lr, remat=spec.remat, unroll=spec.unroll)
  logits = classifier.logits(params, data_features[n_support:])
  loss = cross_entropy(logits, query_labels)
  metrics = {
      'query_loss': loss,
      'query_acc': accuracy(logits, query_labels),
      'inner_loss_first': inner_losses[0],
      'inner_loss_last': inner_losses[-1],
  }
  if synthetic.shape[0] and augmenter.paired:
    originals = jnp.tile(support_images, (synthetic.shape[0] // n_support, 1, 1, 1))
    metrics['synthetic_l1'] = jnp.abs(synthetic - originals).mean()
  return loss, metrics


def batched_outcomes(aug_params: Params, split: DeviceSplit, stream_key: jax.Array,
                     indices: jax.Array, *, augmenter: Augmenter, classifier: Classifier,
                     spec: TaskSpec, mesh: Mesh, consts: Params) -> tuple[jax.Array, dict]:
  """`task_outcome` for tasks `indices` [B] of a key stream, sharded over the mesh.

  The B tasks are laid out as [devices, B / devices]; the first axis is
  sharded over the mesh (one row per device) and vmapped, and each device
  runs its row in chunks of `spec.task_chunk` vmapped tasks, chunks one after
  another (`lax.map`). `task_chunk=0` vmaps a device's whole row at once.

  Returns per-task losses [B] and metrics {name: [B]}.
  """
  devices = mesh.devices.size
  rows = indices.reshape(devices, -1)
  rows = jax.lax.with_sharding_constraint(rows, NamedSharding(mesh, P(TASK_AXIS, None)))
  per_device = rows.shape[1]
  chunk = min(spec.task_chunk or per_device, per_device)

  def outcome(index):
    return task_outcome(aug_params, split, rng.task_keys(stream_key, index),
                        augmenter=augmenter, classifier=classifier, spec=spec, consts=consts)

  def device_row(row):
    if chunk == per_device:
      return jax.vmap(outcome)(row)
    return jax.lax.map(outcome, row, batch_size=chunk)

  if devices == 1:  # a size-1 vmap would leave a batch dim on every matmul
    return device_row(rows[0])
  losses, metrics = jax.vmap(device_row)(rows)
  return losses.reshape(-1), jax.tree.map(lambda x: x.reshape(-1), metrics)


def make_optimizer(outer_config, augmenter: Augmenter,
                   params: Params) -> optax.GradientTransformation:
  """Adam or SGD with global-norm clipping; frozen leaves get exactly zero update.

  Clipping off is an identity in the same chain, so that the optimiser state has one
  layout whatever `grad_clip` is and a run can resume with clipping turned on or off.
  """
  opt = {'adam': optax.adam, 'sgd': optax.sgd}[outer_config.optimizer](outer_config.lr)
  clip = outer_config.grad_clip
  opt = optax.chain(optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(), opt)
  labels = jax.tree.map(lambda t: 'train' if t else 'freeze', augmenter.trainable_mask(params))
  return optax.multi_transform({'train': opt, 'freeze': optax.set_to_zero()}, labels)


def init_params(augmenter: Augmenter, spec: TaskSpec, seed: int) -> Params:
  """The augmenter's initial parameters, a pure function of the run seed."""
  return augmenter.init(rng.stream(rng.root_key(seed), 'augmenter_init'), spec.image_shape)


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
  return jax.device_put(state, replicated(mesh))


def make_meta_step(augmenter: Augmenter, classifier: Classifier, spec: TaskSpec,
                   optimizer: optax.GradientTransformation, mesh: Mesh, meta_batch_size: int):
  """Returns the compiled `meta_step(state, split, consts) -> (state, metrics)`.

  `consts` are the frozen weights placed on the mesh
  (`MetaSetup.placed_constants`, see `task_outcome`). Task keys are `fold_in(stream(root, 'train'),
  step)` split per task, so the step depends on nothing but its arguments
  (resume-safe). `state` is donated.
  """
  def meta_loss(params, split, key, consts):
    losses, metrics = batched_outcomes(
        params, split, key, jnp.arange(meta_batch_size), augmenter=augmenter,
        classifier=classifier, spec=spec, mesh=mesh, consts=consts)
    return losses.mean(), metrics

  def meta_step(state: MetaState, split: DeviceSplit, consts: Params):
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
                 out_shardings=(rep, rep))


@dataclasses.dataclass(frozen=True)
class MetaSetup:
  """The pieces one run (or benchmark) is assembled from."""
  augmenter: Augmenter
  classifier: Classifier
  spec: TaskSpec
  optimizer: optax.GradientTransformation
  initial_params: Params  # init_params(augmenter, spec, seed), computed once
  seed: int
  classifier_consts: Params  # classifier.constants(seed), host arrays
  augmenter_consts: Params = dataclasses.field(default_factory=dict)  # augmenter.constants(seed)

  def init_state(self, mesh: Mesh) -> MetaState:
    return init_state(self.initial_params, self.optimizer, self.seed, mesh)

  @property
  def constants(self) -> Params:
    """The `consts` argument of the compiled steps, as host arrays."""
    return {'classifier': self.classifier_consts, 'augmenter': self.augmenter_consts}

  def placed_constants(self, mesh: Mesh) -> Params:
    """The frozen weights, replicated on the mesh (place once per run)."""
    return jax.device_put(self.constants, replicated(mesh))

  def meta_step(self, mesh: Mesh, meta_batch_size: int):
    return make_meta_step(self.augmenter, self.classifier, self.spec, self.optimizer, mesh,
                          meta_batch_size)


def setup(config, **spec_overrides) -> MetaSetup:
  """Builds augmenter, classifier, task spec and optimiser from a config."""
  augmenter = make_augmenter(config.augmenter, n_way=config.task.n_way)
  spec = dataclasses.replace(TaskSpec.from_config(config), **spec_overrides)
  params = init_params(augmenter, spec, config.seed)
  classifier = make_classifier(config)
  return MetaSetup(augmenter=augmenter, classifier=classifier, spec=spec,
                   optimizer=make_optimizer(config.outer, augmenter, params),
                   initial_params=params, seed=config.seed,
                   classifier_consts=classifier.constants(config.seed),
                   augmenter_consts=augmenter.constants(config.seed))
