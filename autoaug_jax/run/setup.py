"""The one setup path of every run: validate, build the mesh, load and place the data, build.

Training, evaluation of a checkpoint and the benchmark's measurements on
real data (and the sweep runner, through training) start here, in this order: the config is
validated, the mesh built, the class splits loaded, checked against the
task shape and for fit, and placed on the mesh -- user errors cost seconds,
before any model is loaded or anything compiles -- then the augmenter,
classifier, optimiser and frozen weights are built and the weights placed.
Training claims its workdir between the two stages (`prepare_data`, `build`),
so that a dataset that does not fit is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from absl import logging
from jax.sharding import Mesh

from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate
from autoaug_jax.core import sharding, tasks
from autoaug_jax.core.meta_step import MetaSetup, MetaState
from autoaug_jax.core.objective import Objective
from autoaug_jax.data import clear_caches
from autoaug_jax.data.split import FewShotSplit
from autoaug_jax.types import Constants

ALL_SPLITS = ('train', 'val', 'test')


def load_splits(config, names=ALL_SPLITS) -> dict[str, FewShotSplit]:
  """Loads the class splits and checks that the configured tasks can be drawn from each."""
  splits = {}
  for name in names:
    split = builders.load_split(config, name)
    tasks.check_task_shape(split, config.task.n_way, config.task.k_shot, config.task.q_query)
    splits[name] = split
  clear_caches()
  return splits


def to_device(splits: dict[str, FewShotSplit], mesh: Mesh) -> dict[str, tasks.DeviceSplit]:
  """Checks the splits fit, then replicates them over the mesh.

  Callers drop the host copies afterwards: on CPU, the device buffers are
  separate copies in the same host memory.
  """
  placed = tasks.check_memory(list(splits.values()), mesh.devices.flatten().tolist())
  logging.info('Dataset: %s; %.0f MiB of uint8 images per device.',
               ', '.join(f'{s.name} {s.num_classes} classes x {s.images.shape[0]} images'
                         for s in splits.values()), placed / 2**20)
  return {name: tasks.to_device(split, mesh) for name, split in splits.items()}


def checked_mesh(config, *, training: bool = False,
                 checks: Sequence[Callable[[], None]] = ()) -> Mesh:
  """Validates `config`, runs the caller's further `checks` (which may rely on a valid
  config), and builds its mesh (for training, one that splits the meta-batch)."""
  validate(config)
  for check in checks:
    check()
  builders.apply_matmul_precision(config)
  mesh = builders.mesh(config)
  if training:
    sharding.check_divisible(config.meta_batch_size, mesh, 'meta_batch_size')
  return mesh


def prepare_data(config, names=ALL_SPLITS, *, training: bool = False,
                 checks: Sequence[Callable[[], None]] = ()
                 ) -> tuple[Mesh, dict[str, tasks.DeviceSplit]]:
  """The first stage: a checked config's mesh and its splits `names` placed on it."""
  mesh = checked_mesh(config, training=training, checks=checks)
  return mesh, to_device(load_splits(config, names), mesh)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A run ready to compile: its mesh, placed data, pieces and placed frozen weights."""
  mesh: Mesh
  splits: dict[str, tasks.DeviceSplit]
  setup: MetaSetup
  consts: Constants  # setup.constants, replicated on the mesh

  @property
  def objective(self) -> Objective:
    return self.setup.objective

  def init_state(self) -> MetaState:
    return self.setup.init_state(self.mesh)

  def meta_step(self, meta_batch_size: int):
    return self.setup.meta_step(self.mesh, meta_batch_size)


def place(setup: MetaSetup, mesh: Mesh, splits: dict[str, tasks.DeviceSplit]) -> Prepared:
  """A built run's frozen weights placed on the mesh, with its data."""
  return Prepared(mesh=mesh, splits=splits, setup=setup, consts=setup.placed_constants(mesh))


def build(config, mesh: Mesh, splits: dict[str, tasks.DeviceSplit]) -> Prepared:
  """The second stage: augmenter, classifier, optimiser and frozen weights (placed)."""
  return place(builders.meta_setup(config), mesh, splits)


def prepare(config, names=ALL_SPLITS, *, training: bool = False) -> Prepared:
  """Both stages."""
  return build(config, *prepare_data(config, names, training=training))
