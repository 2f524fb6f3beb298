"""Paired evaluation: every method on the same tasks with the same classifier initialisations.

Data flow: outer step -> evaluation (this module) -> report. Task t of an
evaluation stream has fixed keys for sampling, augmentation noise and
classifier init (`rng.task_keys`), whichever augmenter is evaluated, so the
accuracy of method m on task t and of `none` on task t differ only by the
augmentation. The per-task differences are therefore paired, and their mean
gets a t-interval (Section 5.5 of the paper reports large task-to-task
variance; pairing removes it from the deltas).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.sharding import Mesh

from autoaug_jax import rng
from autoaug_jax.augmenters import Augmenter, Params
from autoaug_jax.classifiers import Classifier
from autoaug_jax.outer_step import TaskSpec, batched_outcomes
from autoaug_jax.sharding import padded, replicated, task_sharded
from autoaug_jax.tasks import DeviceSplit, sample_task


def make_eval_fn(augmenter: Augmenter, classifier: Classifier, spec: TaskSpec, mesh: Mesh):
  """Compiled `(params, split, stream_key, indices [b], consts) -> (acc [b], loss [b])`.

  `consts` are the frozen weights placed on the mesh ({'classifier': ..., 'augmenter':
  ...}, see `outer_step.task_outcome`).
  """
  spec = dataclasses.replace(spec, remat=False)  # no backward pass here

  def run(params, split, stream_key, indices, consts):
    losses, metrics = batched_outcomes(params, split, stream_key, indices, augmenter=augmenter,
                                       classifier=classifier, spec=spec, mesh=mesh,
                                       consts=consts)
    return metrics['query_acc'], losses

  rep, sharded = replicated(mesh), task_sharded(mesh)
  return jax.jit(run, in_shardings=(rep, rep, rep, sharded, rep),
                 out_shardings=(sharded, sharded))


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


def evaluate(augmenter: Augmenter, params: Params, split: DeviceSplit, classifier: Classifier,
             spec: TaskSpec, mesh: Mesh, stream_key: jax.Array, num_tasks: int,
             batch_size: int, *, consts: Params, eval_fn=None) -> TaskScores:
  """Query accuracy of each of tasks 0..num_tasks-1 of `stream_key`.

  `consts`: the frozen weights placed on the mesh (`MetaSetup.placed_constants`;
  {'classifier': {}, 'augmenter': {}} for the ConvNets).
  """
  eval_fn = eval_fn or make_eval_fn(augmenter, classifier, spec, mesh)
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


@dataclasses.dataclass(frozen=True)
class MethodSummary:
  method: str
  num_tasks: int
  mean_acc: float
  acc_ci: float            # half-width of the 95% t-interval of the mean accuracy
  delta: float             # mean paired (method - baseline) accuracy
  delta_lo: float          # 95% t-interval of the mean delta
  delta_hi: float
  significant: bool        # the delta interval excludes zero
  diverged: int = 0        # tasks whose classifier diverged (scored 0)


def t_half_width(values: np.ndarray) -> float:
  n = values.size
  if n < 2:
    return float('nan')
  return float(scipy.stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


def summarize(accuracies: Mapping[str, np.ndarray], baseline: str = 'none',
              diverged: Mapping[str, int] | None = None) -> list[MethodSummary]:
  """Mean accuracy and paired delta against `baseline`, with 95% t-intervals.

  Args:
    accuracies: method -> per-task accuracies [T], all on the same T tasks.
    baseline: the method deltas are taken against.
    diverged: method -> number of tasks whose classifier diverged (reported).
  """
  if baseline not in accuracies:
    raise ValueError(f'The baseline {baseline!r} was not evaluated; add it to eval.methods.')
  base = np.asarray(accuracies[baseline], np.float64)
  rows = []
  for method, acc in accuracies.items():
    acc = np.asarray(acc, np.float64)
    if acc.shape != base.shape:
      raise ValueError(f'{method}: {acc.shape} accuracies vs {base.shape} for {baseline}; '
                       'paired deltas need the same tasks.')
    diff = acc - base
    half = t_half_width(diff) if method != baseline else 0.0
    delta = float(diff.mean())
    rows.append(MethodSummary(
        method=method, num_tasks=acc.size, mean_acc=float(acc.mean()),
        acc_ci=t_half_width(acc), delta=delta, delta_lo=delta - half, delta_hi=delta + half,
        significant=bool(method != baseline and (delta - half > 0 or delta + half < 0)),
        diverged=int((diverged or {}).get(method, 0))))
  return rows


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
    task = sample_task(split, keys['sample'], n_way=spec.n_way, k_shot=spec.k_shot,
                       q_query=spec.q_query, spurious=spec.spurious)
    synthetic, _ = augmenter.augment(params, task.support_images, task.support_labels,
                                     keys['augment'], consts)
    originals = task.support_images
    if not augmenter.paired:  # class-major support: one image per class
      originals = originals[::spec.k_shot]
    return originals, synthetic

  return run
