"""Writes class-folder image trees, as researchers hold their own datasets, for the tests.

Every image is distinct and smooth (a seeded coarse pattern upsampled), so
tests can tell which file a prepared image came from and JPEG keeps them
apart. `write_tree` makes the plain layouts; tests add the awkward files
(grey-scale, palette, alpha, CMYK, nested folders, stray files) on top.
`write_large_tree` makes the ~10,000-JPEG tree BUILD_NOTES times `prepare` on:

  python tests/folder_fixtures.py /tmp/big_tree 100 100
"""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
from PIL import Image

SPLIT_CLASSES = {'train': ['ant', 'bee', 'cat', 'dog'], 'val': ['eel', 'fox'],
                 'test': ['gnu', 'hen', 'ibis']}
FLAT_CLASSES = ['apple', 'banana', 'cherry', 'damson', 'elder']
PER_CLASS = 12


def pattern(class_name: str, i: int, size: tuple[int, int] = (20, 14)) -> np.ndarray:
  """A distinct smooth RGB uint8 [height, width, 3] image; size is (width, height)."""
  rng = np.random.default_rng([zlib.crc32(class_name.encode()), i])
  coarse = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR))


def save(path: str, image: np.ndarray | Image.Image, **kwargs) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  image.save(path, **kwargs)
  return path


def write_class(folder: str, class_name: str, count: int = PER_CLASS, ext: str = '.png',
                size: tuple[int, int] = (20, 14)) -> list[str]:
  return [save(os.path.join(folder, class_name, f'{class_name}_{i:03d}{ext}'),
               pattern(class_name, i, size)) for i in range(count)]


def write_tree(root: str, classes: dict[str, list[str]] | list[str] | None = None,
               count: int = PER_CLASS, ext: str = '.png') -> str:
  """A flat tree ROOT/<class>/ (classes a list) or a split tree ROOT/<split>/<class>/."""
  classes = FLAT_CLASSES if classes is None else classes
  if isinstance(classes, dict):
    for split, names in classes.items():
      for name in names:
        write_class(os.path.join(root, split), name, count, ext)
  else:
    for name in classes:
      write_class(root, name, count, ext)
  return root


def write_large_tree(root: str, num_classes: int = 100, per_class: int = 100,
                     size: tuple[int, int] = (500, 375)) -> str:
  """num_classes x per_class JPEGs of photo size (ImageNet's typical 500x375)."""
  base = pattern('large', 0, size)
  for c in range(num_classes):
    folder = os.path.join(root, f'class_{c:04d}')
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      # A cheap distinct image: the shared pattern rolled and tinted per file.
      image = np.roll(base, (c * 7 + i) % size[1], axis=0) ^ np.uint8((c * 31 + i) % 256)
      Image.fromarray(image).save(os.path.join(folder, f'img_{i:04d}.jpg'), quality=90)
  return root


if __name__ == '__main__':
  write_large_tree(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
