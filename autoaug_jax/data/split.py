"""The host-side container every dataset loader returns: one split's images and labels.

Loaders (embedded glyphs, prepared MiniImagenet, any local TFDS dataset) all
produce a `FewShotSplit`; the task sampler (`autoaug_jax.core.tasks`) moves it
to the device once as uint8 and draws N-way K-shot tasks from it there.
Classes may hold different numbers of images: `class_table` pads them into a
rectangular index so that sampling stays one vectorised gather.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class FewShotSplit:
  """One split of a few-shot dataset, on the host.

  Attributes:
    images: [n, H, W, 3] uint8.
    labels: [n] int32 class index in [0, num_classes).
    class_names: human-readable name of each class.
    masks: optional [n, H, W] uint8 foreground coverage (255 = object); lets the
      spurious-correlation knob recolour backgrounds only.
    name: e.g. 'glyphs/train', used in messages.
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: list[str]
  masks: np.ndarray | None = None
  name: str = ''

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
      raise ValueError(f'{self.name}: images must be uint8 [n, H, W, 3], got '
                       f'{self.images.dtype} {self.images.shape}.')
    if self.labels.shape != (self.images.shape[0],):
      raise ValueError(f'{self.name}: {self.labels.shape[0]} labels for '
                       f'{self.images.shape[0]} images.')
    if self.masks is not None and self.masks.shape != self.images.shape[:3]:
      raise ValueError(f'{self.name}: masks {self.masks.shape} do not match images '
                       f'{self.images.shape[:3]}.')
    if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
      raise ValueError(f'{self.name}: labels must lie in [0, {self.num_classes}).')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def class_counts(self) -> np.ndarray:
    """[num_classes] int32 number of images of each class."""
    return np.bincount(self.labels, minlength=self.num_classes).astype(np.int32)

  def class_table(self) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular per-class image index.

    Returns:
      index [num_classes, max_count] int32 (rows padded with their first entry)
      and counts [num_classes] int32.
    """
    counts = self.class_counts()
    index = np.zeros((self.num_classes, max(int(counts.max(initial=0)), 1)), np.int32)
    order = np.argsort(self.labels, kind='stable')
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for c in range(self.num_classes):
      members = order[starts[c]:starts[c] + counts[c]]
      index[c, :counts[c]] = members
      index[c, counts[c]:] = members[0] if counts[c] else 0
    return index, counts


def seeded_subset(count: int, per_class: int, seed: int, class_name: str) -> np.ndarray:
  """Sorted positions of a seeded subset of `per_class` of a class's `count` images (0: all).

  Depends only on the seed and the class name, so a class keeps the same
  images whichever split or dataset order it appears in.
  """
  if per_class <= 0 or per_class >= count:
    return np.arange(count)
  rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
  return np.sort(rng.choice(count, per_class, replace=False))


def host_available_bytes() -> int | None:
  """The host's available memory (Linux `MemAvailable`), or None where unknown."""
  try:
    with open('/proc/meminfo') as f:
      info = dict(line.split(':', 1) for line in f)
    return int(info['MemAvailable'].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return None
