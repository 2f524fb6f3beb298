"""The per-task objective: Algorithm 1 of the paper for one task, and for a batch of tasks.

Data flow: task sampler -> augmenter -> inner loop -> objective (this module)
-> meta-step and evaluation. `task_outcome` samples S and Q, generates
S' = A(S), trains a freshly initialised classifier on S u S' for I steps and
scores it on Q. `batched_outcomes` runs it for a batch of tasks laid out
over the device mesh. Both are pure; `jax.grad` of the query loss is the
meta-gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from autoaug_jax.augmenters.base import Augmenter
from autoaug_jax.classifiers.base import Classifier
from autoaug_jax.core import rng
from autoaug_jax.core.inner_loop import InnerLoop, accuracy, cross_entropy, train_classifier
from autoaug_jax.core.sharding import TASK_AXIS
from autoaug_jax.core.tasks import DeviceSplit, TaskSpec, sample
from autoaug_jax.types import Constants, Params


@dataclasses.dataclass(frozen=True)
class Objective:
  """Everything static about one task's objective (hashable: closed over by jit)."""
  augmenter: Augmenter
  classifier: Classifier
  task: TaskSpec
  inner: InnerLoop


def task_outcome(aug_params: Params, split: DeviceSplit, keys: dict[str, jax.Array],
                 objective: Objective, consts: Constants) -> tuple[jax.Array, dict]:
  """Algorithm 1 for one task; returns (query loss, flat dict of scalar metrics).

  `consts`: the frozen weights, passed in rather than closed over (see `Constants`).
  """
  task = sample(split, keys['sample'], objective.task)
  return support_query_outcome(aug_params, task.support_images, task.support_labels,
                               task.query_images, task.query_labels, keys, objective, consts)


def support_query_outcome(aug_params: Params, support_images: jax.Array,
                          support_labels: jax.Array, query_images: jax.Array,
                          query_labels: jax.Array, keys: dict[str, jax.Array],
                          objective: Objective, consts: Constants) -> tuple[jax.Array, dict]:
  """Algorithm 1 on a given support set [n, H, W, 3] / [n] and query set [q, H, W, 3] / [q].

  Uses keys['augment'] and keys['init']; also the pseudo-task objective of
  test-time adaptation (`adaptation.py`), whose support and query sets are
  both cut from a test task's support set.
  """
  augmenter, classifier, inner = objective.augmenter, objective.classifier, objective.inner
  synthetic, synthetic_labels = augmenter.augment(
      aug_params, support_images, support_labels, keys['augment'], consts.augmenter)
  clf_consts = consts.classifier
  # The classifier's fixed part runs once per task, outside the inner scan. S and
  # Q go through it together; S' separately, so that the backward pass through
  # it (the meta-gradient's way to the augmenter) covers S' only.
  n_support = support_images.shape[0]
  data_features = classifier.embed(clf_consts, jnp.concatenate([support_images, query_images]))
  features = data_features[:n_support]
  if synthetic.shape[0]:
    features = jnp.concatenate([features, classifier.embed(clf_consts, synthetic)])
  labels = jnp.concatenate([support_labels, synthetic_labels])
  weight = augmenter.synthetic_weight(aug_params)
  weights = None
  if weight is not None and synthetic.shape[0]:
    weights = jnp.concatenate([jnp.ones(n_support, features.dtype),
                               jnp.broadcast_to(weight, (synthetic.shape[0],))])
  params0 = classifier.init(keys['init'], objective.task.image_shape, clf_consts)
  params, inner_losses = train_classifier(
      classifier, params0, features, labels,
      steps=inner.steps, lr=inner.lr, remat=inner.remat, unroll=inner.unroll,
      weights=weights)
  logits = classifier.logits(params, data_features[n_support:])
  loss = cross_entropy(logits, query_labels)
  metrics = {
      'query_loss': loss,
      'query_acc': accuracy(logits, query_labels),
      'inner_loss_first': inner_losses[0],
      'inner_loss_last': inner_losses[-1],
  }
  if weight is not None:
    metrics['synthetic_weight'] = weight
  if synthetic.shape[0] and augmenter.paired:
    originals = jnp.tile(support_images, (synthetic.shape[0] // n_support, 1, 1, 1))
    metrics['synthetic_l1'] = jnp.abs(synthetic - originals).mean()
  return loss, metrics


def batched_outcomes(aug_params: Params, split: DeviceSplit, stream_key: jax.Array,
                     indices: jax.Array, objective: Objective, consts: Constants, *,
                     mesh: Mesh, task_chunk: int = 0) -> tuple[jax.Array, dict]:
  """`task_outcome` for tasks `indices` [B] of a key stream, sharded over the mesh.

  The B tasks are laid out as [devices, B / devices], one row per device
  (`shard_map`), and each device runs its row in chunks of `task_chunk`
  vmapped tasks, chunks one after another (`lax.map`). `task_chunk=0` vmaps a
  device's whole row at once. A shard_map rather than a vmap over the rows:
  each device's program then has no device axis, so `task_chunk=1` leaves
  the classifier's weights unbatched and its native convolutions ungrouped
  (a vmapped device axis made them grouped, which XLA:CPU runs as naive
  loops and the SPMD partitioner did not split).

  Returns per-task losses [B] and metrics {name: [B]}.
  """
  devices = mesh.devices.size
  rows = indices.reshape(devices, -1)
  per_device = rows.shape[1]
  chunk = min(task_chunk or per_device, per_device)

  def device_rows(aug_params, split, stream_key, rows, consts):
    """This device's row of `rows` ([1, B / devices] inside the shard_map)."""
    row = rows[0]

    def outcome(index):
      return task_outcome(aug_params, split, rng.task_keys(stream_key, index), objective,
                          consts)

    if chunk == per_device:
      return jax.vmap(outcome)(row)
    return jax.lax.map(outcome, row, batch_size=chunk)

  if devices == 1:
    return device_rows(aug_params, split, stream_key, rows, consts)

  # check_vma=False: with it, the inner loop's gradient with respect to values
  # that do not vary over the mesh (the classifier's zero-initialised biases)
  # would be summed over the devices, coupling their tasks. The outer gradient
  # is taken outside, where the replicated inputs' cotangents are summed as
  # they must be (tests/sharded_check.py: 4 devices equal 1).
  run = jax.shard_map(device_rows, mesh=mesh, in_specs=(P(), P(), P(), P(TASK_AXIS, None), P()),
                      out_specs=P(TASK_AXIS), check_vma=False)
  return run(aug_params, split, stream_key, rows, consts)
