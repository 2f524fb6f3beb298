"""On-device N-way K-shot Q-query task sampler.

Data flow: dataset (`autoaug_jax.data`) -> task sampler (this module) ->
augmenter. A whole class split is moved to the device once, as uint8
(`DeviceSplit`); `sample_task` draws one task from it with `jax.random` only,
so it runs inside the compiled meta-step and `vmap`s over a meta-batch of task
keys with no Python loop per task.

`check_task_shape` refuses impossible shapes (more ways than classes, more
shots plus queries than a class has images) before anything is compiled.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from autoaug_jax.core.sharding import put_replicated
from autoaug_jax.data.split import FewShotSplit, host_available_bytes
from autoaug_jax.errors import ConfigError
from autoaug_jax.types import float_dtype


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What one task is: N-way K-shot Q-query at image_size, and how its support set is drawn.

  Hashable: closed over by jit. `spurious` is the strength of a class-tied
  background colour on support images only (the paper's motivating spurious
  correlation, Section 1; 0 = none).
  """
  n_way: int
  k_shot: int
  q_query: int
  image_size: int
  spurious: float = 0.0

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)


@struct.dataclass
class DeviceSplit:
  """One class split on device.

  Attributes:
    images: [n, H, W, 3] uint8.
    index: [C, M] int32, row c lists the images of class c (padded).
    counts: [C] int32, images per class.
    masks: [n, H, W] uint8 foreground coverage, or None.
  """
  images: jax.Array
  index: jax.Array
  counts: jax.Array
  masks: jax.Array | None = None

  @property
  def num_classes(self) -> int:
    return self.index.shape[0]


@struct.dataclass
class Task:
  """One few-shot task; labels are 0..N-1 in a random class order.

  Attributes:
    support_images: [N * K, H, W, 3] float32 in [0, 1], class-major.
    support_labels: [N * K] int32.
    query_images: [N * Q, H, W, 3] float32 in [0, 1].
    query_labels: [N * Q] int32.
  """
  support_images: jax.Array
  support_labels: jax.Array
  query_images: jax.Array
  query_labels: jax.Array


def to_device(split: FewShotSplit, mesh: Mesh | None = None) -> DeviceSplit:
  """Moves a split to device memory (replicated over `mesh` if given; each process
  places its own copies)."""
  index, counts = split.class_table()
  host = DeviceSplit(images=split.images, index=index, counts=counts, masks=split.masks)
  try:
    return jax.device_put(host) if mesh is None else put_replicated(host, mesh)
  except Exception as e:  # e.g. RESOURCE_EXHAUSTED on a small accelerator
    raise MemoryError(
        f'{split.name}: could not place {split.images.nbytes / 2**20:.0f} MiB of uint8 images '
        f'on {jax.devices()[0].platform}: {e}. Use a smaller image_size or fewer '
        'data.images_per_class.') from e


# Share of free memory the splits may take: the compiled meta-step needs the rest.
_MEMORY_SHARE = 0.5


def _free_bytes(device: jax.Device) -> tuple[int | None, str]:
  """Free memory of a device (accelerators) or of the host (CPU devices share it)."""
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    if 'bytes_limit' in stats:
      return stats['bytes_limit'] - stats.get('bytes_in_use', 0), f'{device.device_kind} memory'
    return None, ''
  return host_available_bytes(), 'available host memory'


def placed_bytes(splits: list[FewShotSplit]) -> int:
  """Bytes of uint8 images and masks that `to_device` places on each device."""
  return sum(s.images.nbytes + (s.masks.nbytes if s.masks is not None else 0) for s in splits)


def check_memory(splits: list[FewShotSplit], devices: list[jax.Device]) -> int:
  """Refuses, before any transfer, splits that would not fit once replicated on `devices`.

  Every device holds its own copy of each split (uint8 images and masks);
  on CPU the copies of all local devices share host memory. Returns the
  bytes placed per device.
  """
  per_device = placed_bytes(splits)
  local = [d for d in devices if d.process_index == jax.process_index()]
  free, what = _free_bytes(local[0])
  copies = len(local) if local[0].platform == 'cpu' else 1
  if free is not None and per_device * copies > _MEMORY_SHARE * free:
    names = ', '.join(f'{s.name} {s.images.nbytes / 2**30:.2f} GiB' for s in splits)
    raise ConfigError(
        f'The dataset does not fit: {names} as uint8, times {copies} device copies, is '
        f'{per_device * copies / 2**30:.2f} GiB, more than half of the {free / 2**30:.2f} GiB '
        f'{what} (the rest is for the meta-step). Keep fewer images with '
        'data.images_per_class (the paper uses 60), lower image_size, or on CPU use fewer '
        'devices (num_cpu_devices).')
  return per_device


def check_task_shape(split: FewShotSplit, n_way: int, k_shot: int, q_query: int) -> None:
  """Raises ConfigError if N-way K-shot Q-query tasks cannot be drawn from `split`."""
  if n_way > split.num_classes:
    raise ConfigError(
        f'task.n_way={n_way} but {split.name} has only {split.num_classes} classes; '
        f'use task.n_way <= {split.num_classes}.')
  counts = split.class_counts()
  need = k_shot + q_query
  short = np.flatnonzero(counts < need)
  if short.size:
    names = ', '.join(repr(split.class_names[i]) for i in short[:5])
    raise ConfigError(
        f'task.k_shot + task.q_query = {need} images per class, but {short.size} classes '
        f'of {split.name} have fewer (smallest: {counts.min()}; e.g. {names}). Lower '
        f'task.k_shot or task.q_query to at most {counts.min()} in total, or add images.')


def _recolour_support(images, masks, labels, colours, strength):
  """Paints a class-tied colour over the background (or whole image if no mask)."""
  if masks is None:
    background = jnp.ones(images.shape[:-1] + (1,), images.dtype)
  else:
    background = 1.0 - masks[..., None].astype(images.dtype) / 255.0
  weight = strength * background
  return images * (1.0 - weight) + colours[labels][:, None, None, :] * weight


def sample(split: DeviceSplit, key: jax.Array, spec: TaskSpec) -> Task:
  """`sample_task` for the task shape and support-set colouring of `spec`."""
  return sample_task(split, key, n_way=spec.n_way, k_shot=spec.k_shot, q_query=spec.q_query,
                     spurious=spec.spurious)


def sample_task(split: DeviceSplit, key: jax.Array, *, n_way: int, k_shot: int,
                q_query: int, spurious: float = 0.0) -> Task:
  """Draws one task: N distinct classes, K + Q distinct images of each.

  Args:
    split: the class split on device.
    key: PRNG key of this task.
    n_way, k_shot, q_query: task shape (static).
    spurious: strength of a class-tied background colour on support images only
      (queries keep their natural backgrounds), the spurious correlation of the
      paper's Section 1.

  Returns:
    A Task.
  """
  k_class, k_image, k_colour = jax.random.split(key, 3)
  classes = jax.random.choice(k_class, split.num_classes, (n_way,), replace=False)
  # Random scores, padding slots pushed last: the first K+Q of each row's
  # argsort are K+Q distinct images of that class.
  max_count = split.index.shape[1]
  scores = jax.random.uniform(k_image, (n_way, max_count))
  valid = jnp.arange(max_count)[None, :] < split.counts[classes][:, None]
  order = jnp.argsort(jnp.where(valid, scores, 2.0), axis=1)[:, :k_shot + q_query]
  ids = split.index[classes[:, None], order]  # [N, K+Q]
  images = split.images[ids].astype(float_dtype()) / 255.0  # [N, K+Q, H, W, 3]
  labels = jnp.broadcast_to(jnp.arange(n_way, dtype=jnp.int32)[:, None], ids.shape)
  shape = images.shape[2:]
  support = images[:, :k_shot].reshape(-1, *shape)
  support_labels = labels[:, :k_shot].reshape(-1)
  if spurious > 0:
    masks = None if split.masks is None else split.masks[ids[:, :k_shot]].reshape(-1, *shape[:2])
    colours = jax.random.uniform(k_colour, (n_way, 3))
    support = _recolour_support(support, masks, support_labels, colours, spurious)
  return Task(
      support_images=support,
      support_labels=support_labels,
      query_images=images[:, k_shot:].reshape(-1, *shape),
      query_labels=labels[:, k_shot:].reshape(-1))
