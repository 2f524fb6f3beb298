"""Paired evaluation: every method on the same tasks with the same classifier initialisations.

Data flow: meta-step -> evaluation (this module) -> report. Task t of an
evaluation stream has fixed keys for sampling, augmentation noise and
classifier init (`rng.task_keys`), whichever augmenter is evaluated, so the
accuracy of method m on task t and of `none` on task t differ only by the
augmentation. The per-task differences are therefore paired; `statistics`
gives their mean a t-interval.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from autoaug_jax.augmenters.base import Augmenter
from autoaug_jax.core import rng
from autoaug_jax.core.objective import Objective, batched_outcomes
from autoaug_jax.core.sharding import compiler_options, padded, replicated, task_sharded
from autoaug_jax.core.tasks import DeviceSplit, TaskSpec, sample
from autoaug_jax.types import Constants, Params


def make_eval_fn(objective: Objective, mesh: Mesh, task_chunk: int = 0):
  """Compiled `(params, split, stream_key, indices [b], consts) -> (acc [b], loss [b])`.

  `consts`: the frozen weights placed on the mesh (`MetaSetup.placed_constants`).
  """
  # No backward pass here.
  objective = dataclasses.replace(objective,
                                  inner=dataclasses.replace(objective.inner, remat=False))

  def run(params, split, stream_key, indices, consts):
    losses, metrics = batched_outcomes(params, split, stream_key, indices, objective, consts,
                                       mesh=mesh, task_chunk=task_chunk)
    return metrics['query_acc'], losses

  rep, sharded = replicated(mesh), task_sharded(mesh)
  # Results replicated: a few floats per task, gathered so that every process
  # (its devices hold only their own tasks' results) can read all of them.
  return jax.jit(run, in_shardings=(rep, rep, rep, sharded, rep),
                 out_shardings=(rep, rep), compiler_options=compiler_options(mesh))


@dataclasses.dataclass(frozen=True)
class TaskScores:
  """Per-task results of one method on a task set.

  accuracy: [T] query accuracy; a task whose classifier diverged scores 0.
  diverged: [T] bool, the task's query loss is non-finite (NaN/inf logits
    would otherwise be scored by whatever argmax makes of them).
  """
  accuracy: np.ndarray
  diverged: np.ndarray

  def mean(self) -> float:
    return float(self.accuracy.mean())

  @property
  def num_diverged(self) -> int:
    return int(self.diverged.sum())


def evaluate(objective: Objective, params: Params, split: DeviceSplit, mesh: Mesh,
             stream_key: jax.Array, num_tasks: int, batch_size: int, *, consts: Constants,
             task_chunk: int = 0, eval_fn=None) -> TaskScores:
  """Query accuracy of each of tasks 0..num_tasks-1 of `stream_key`.

  `consts`: the frozen weights placed on the mesh (`MetaSetup.placed_constants`;
  empty for the ConvNets). `eval_fn`: a `make_eval_fn` program to reuse.
  """
  eval_fn = eval_fn or make_eval_fn(objective, mesh, task_chunk)
  batch = padded(min(batch_size, num_tasks), mesh)
  accs, losses = [], []
  for start in range(0, num_tasks, batch):
    # The last batch is padded with extra tasks, whose results are dropped.
    acc, loss = eval_fn(params, split, stream_key,
                        jnp.arange(start, start + batch, dtype=jnp.int32), consts)
    accs.append(np.asarray(acc)[:num_tasks - start])
    losses.append(np.asarray(loss)[:num_tasks - start])
  accuracy, diverged = np.concatenate(accs), ~np.isfinite(np.concatenate(losses))
  return TaskScores(np.where(diverged, np.zeros_like(accuracy), accuracy), diverged)


def eval_stream(task_seed: int, split_name: str) -> jax.Array:
  """The key stream of a fixed evaluation task set (independent of the run seed)."""
  return rng.stream(rng.root_key(task_seed), f'eval/{split_name}')


def example_augmentations(augmenter: Augmenter, params: Params, split: DeviceSplit,
                          spec: TaskSpec, stream_key: jax.Array, index: int = 0, *,
                          consts: Params = None) -> tuple[np.ndarray, np.ndarray]:
  """Support images of task `index` and the augmenter's synthetic images of them.

  `consts`: the augmenter's frozen weights (`augmenter.constants`), if any.

  Returns:
    originals [n, H, W, 3] and synthetic [m, H, W, 3], floats in [0, 1], with
    synthetic[i] made from originals[i % n]: the N * K support images and their
    F * N * K augmentations, or, for an augmenter that generates per class
    (diffusion), the first support image of each class and the F * N images.
  """
  run = _example_fn(augmenter, spec, index)
  originals, synthetic = jax.device_get(run(params, split, stream_key, consts or {}))
  return np.asarray(originals), np.asarray(synthetic)


def clear_caches() -> None:
  """Drops the cached example-grid programs and the augmenters they hold (between
  runs of one process: a diffusion augmenter keeps its host weights alive)."""
  _example_fn.cache_clear()


@functools.lru_cache(maxsize=8)
def _example_fn(augmenter: Augmenter, spec: TaskSpec, index: int):
  # Cached: meta-validation calls this every few hundred steps, and compiling a
  # diffusion sampler each time would cost more than the validation itself.
  @jax.jit
  def run(params, split, key, consts):
    keys = rng.task_keys(key, index)
    task = sample(split, keys['sample'], spec)
    synthetic, _ = augmenter.augment(params, task.support_images, task.support_labels,
                                     keys['augment'], consts)
    originals = task.support_images
    if not augmenter.paired:  # class-major support: one image per class
      originals = originals[::spec.k_shot]
    return originals, synthetic

  return run
