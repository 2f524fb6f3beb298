"""Writes tiny MiniImagenet folders in each on-disk layout, for the data tests.

Every image is distinct (a smooth random pattern seeded by class and index),
so tests can tell which source image a loaded or sampled image came from.
"""

from __future__ import annotations

import csv
import os
import pickle

import numpy as np
from PIL import Image

CLASSES = {'train': ['n01000001', 'n01000002', 'n01000003', 'n01000004'],
           'val': ['n02000001', 'n02000002', 'n02000003'],
           'test': ['n03000001', 'n03000002', 'n03000003']}
PER_CLASS = 6
SIZE = 16


def image(class_name: str, i: int, size: int = SIZE) -> np.ndarray:
  """A distinct smooth RGB uint8 [size, size, 3] image (smooth, so JPEG keeps it apart)."""
  rng = np.random.default_rng([int(class_name[1:]), i])
  coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))


def class_images(class_name: str, count: int = PER_CLASS) -> np.ndarray:
  return np.stack([image(class_name, i) for i in range(count)])


def write_learn2learn(root: str, classes=None, val_name: str = 'validation') -> str:
  classes = classes or CLASSES
  os.makedirs(root, exist_ok=True)
  for split, names in classes.items():
    arrays, class_dict = [], {}
    for name in names:
      class_dict[name] = list(range(len(arrays) * PER_CLASS, (len(arrays) + 1) * PER_CLASS))
      arrays.append(class_images(name))
    file = f'mini-imagenet-cache-{val_name if split == "val" else split}.pkl'
    with open(os.path.join(root, file), 'wb') as f:
      pickle.dump({'image_data': np.concatenate(arrays), 'class_dict': class_dict}, f)
  return root


def write_rfs(root: str, classes=None) -> str:
  classes = classes or CLASSES
  os.makedirs(root, exist_ok=True)
  files = {'train': 'train_phase_train', 'val': 'val', 'test': 'test'}
  label = 0
  for split, names in classes.items():
    data, labels, catname2label = [], [], {}
    for name in names:
      catname2label[name] = label
      data.append(class_images(name))
      labels += [label] * PER_CLASS
      label += 1
    with open(os.path.join(root, f'miniImageNet_category_split_{files[split]}.pickle'), 'wb') as f:
      pickle.dump({'data': np.concatenate(data), 'labels': labels,
                   'catname2label': catname2label}, f, protocol=2)
  return root


def write_csv(root: str, classes=None, *, val_name: str = 'val', folders: str = 'images',
              bom: bool = False) -> str:
  """CSV files + JPEGs; returns root. Loaded pixels equal PIL's JPEG decode.

  folders: 'images' (images/FILE) or 'split_label' ({split}/{label}/FILE);
  bom: start each CSV with a UTF-8 byte-order mark, as spreadsheets do.
  """
  classes = classes or CLASSES
  for split, names in classes.items():
    csv_name = f'{val_name if split == "val" else split}.csv'
    with open(os.path.join(_mkdir(root), csv_name), 'w', newline='',
              encoding='utf-8-sig' if bom else 'utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['filename', 'label'])
      for name in names:
        folder = (os.path.join(root, 'images') if folders == 'images'
                  else os.path.join(root, split, name))
        for i in range(PER_CLASS):
          filename = f'{name}{i:08d}.jpg'
          Image.fromarray(image(name, i)).save(os.path.join(_mkdir(folder), filename),
                                               quality=95)
          writer.writerow([filename, name])
  return root


def _mkdir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


def find_jpeg(root: str, class_name: str, i: int) -> str:
  for path in (os.path.join(root, 'images', f'{class_name}{i:08d}.jpg'),
               *(os.path.join(root, s, class_name, f'{class_name}{i:08d}.jpg') for s in CLASSES)):
    if os.path.exists(path):
      return path
  raise FileNotFoundError(class_name, i)


def write_old_numpy_rfs(root: str) -> str:
  """RFS pickles naming numpy's pre-2.0 modules (`numpy.core`), as files from 2018 do."""
  write_rfs(root)
  for file in os.listdir(root):
    path = os.path.join(root, file)
    with open(path, 'rb') as f:
      data = f.read()
    assert b'numpy._core' in data  # protocol 2 names globals as text: rename them
    with open(path, 'wb') as f:
      f.write(data.replace(b'numpy._core', b'numpy.core'))
  return root


WRITERS = {
    'learn2learn': write_learn2learn,
    'learn2learn-val': lambda root: write_learn2learn(root, val_name='val'),
    'csv': write_csv,
    'csv-validation-split-folders-bom': lambda root: write_csv(
        root, val_name='validation', folders='split_label', bom=True),
    'rfs': write_rfs,
    'rfs-old-numpy': write_old_numpy_rfs,
}


def expected_images(layout: str, root: str, class_name: str) -> np.ndarray:
  """What the loader should return for a class at the source size, per layout."""
  if not layout.startswith('csv'):
    return class_images(class_name)
  return np.stack([np.asarray(Image.open(find_jpeg(root, class_name, i)).convert('RGB'))
                   for i in range(PER_CLASS)])
