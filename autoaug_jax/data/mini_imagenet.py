"""MiniImagenet as a TFDS dataset: the one-time conversion and the loader training reads.

Data flow: files on disk (`mini_imagenet_files`) -> `prepare` (decode, check,
resize once, write a TFDS `mini_imagenet/{S}px` dataset in array_record
format) -> `load_split` (random access through `tfds.data_source`, no
TensorFlow) -> `FewShotSplit` -> the on-device task sampler.

Conversion is atomic and written in class order with the per-class counts in
the metadata (`prepared`): the loader reads a seeded subset of each class (the
paper's 60 images per class) without decoding the other 540, and checks every
label it decodes against that order.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from autoaug_jax.data import images as image_ops
from autoaug_jax.data import mini_imagenet_files as files
from autoaug_jax.data import prepared, tfds_source
from autoaug_jax.data.split import FewShotSplit, seeded_subset
from autoaug_jax.errors import DataError

NAME = 'mini_imagenet'
# Bump when the written format changes; the loader refuses other versions.
VERSION = '1.0.0'


class MiniImagenet(prepared.FewShotBuilder):
  """MiniImagenet (Vinyals et al. 2016; Ravi & Larochelle split), built from manual files.

  One builder config per prepared size (`{S}px`), made by `prepare` and read
  back from the folder's own metadata, so none is predeclared.
  """

  VERSION = tfds.core.Version(VERSION)
  DESCRIPTION = 'MiniImagenet few-shot classes, one split per class set.'
  BUILDER_CONFIGS = []
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Run `python -m autoaug_jax.data.prepare --source=DIR --out=DATA_DIR`, where DIR holds '
      'MiniImagenet as learn2learn pickles, train/val/test.csv with images/, or RFS pickles.')


def _fingerprint(raw: files.RawSource, size: int, encoding: str, skip_unreadable: bool) -> dict:
  """What a prepared folder was made from; a mismatch means `--out` holds another dataset.

  For CSV sources the image files' total size and newest mtime stand in for
  their content, so repaired or replaced JPEGs count as a different source.
  """
  paths = [p for s in files.SPLITS for c in raw.splits[s] for p in (c.paths or [])]
  stats = [os.stat(p) for p in paths]
  return {
      'layout': raw.layout,
      'files': {s: [os.path.basename(p), os.path.getsize(p)] for s, p in raw.files.items()},
      'classes': {s: [c.name for c in raw.splits[s]] for s in files.SPLITS},
      'images': {s: int(sum(len(c) for c in raw.splits[s])) for s in files.SPLITS},
      'image_files': [sum(st.st_size for st in stats),
                      max((st.st_mtime_ns for st in stats), default=0)],
      'image_size': size,
      'encoding': encoding,
      'skip_unreadable': skip_unreadable,
  }


def version_dir(data_dir: str, image_size: int) -> str:
  return os.path.join(data_dir, NAME, f'{image_size}px', VERSION)


def prepare(source: str, out: str, image_size: int = 84, *, encoding: str = 'png',
            overwrite: bool = False, skip_unreadable: bool = False,
            crop: str = 'squash') -> str:
  """Converts MiniImagenet files under `source` into `out/mini_imagenet/{S}px/1.0.0`.

  Returns the prepared folder. Raises DataError (nothing written) on bad input,
  or if `out` already holds a different MiniImagenet at this size and
  `overwrite` is False. Preparing the same source again is a no-op unless
  `overwrite` is set. `crop`: 'squash' (Ravi & Larochelle's tool) or 'center'.
  """
  prepared.check_settings(image_size, encoding, crop)
  out = os.path.abspath(os.path.expanduser(out))
  raw = files.read_source(os.path.expanduser(source))
  fingerprint = _fingerprint(raw, image_size, encoding, skip_unreadable)
  if crop != 'squash':  # only when set, so datasets prepared before --crop existed still match
    fingerprint['crop'] = crop
  target = version_dir(out, image_size)
  if prepared.existing_is_same(target, fingerprint, overwrite, 'MiniImagenet'):
    return target

  counts = {s: [len(c) for c in raw.splits[s]] for s in files.SPLITS}
  logging.info('Found MiniImagenet (%s layout) in %s: %s classes, %s images.', raw.layout,
               raw.root, '/'.join(str(len(counts[s])) for s in files.SPLITS),
               '/'.join(str(sum(counts[s])) for s in files.SPLITS))
  if [len(counts[s]) for s in files.SPLITS] != [64, 16, 20]:
    logging.warning('The split files hold %s classes, not the standard 64/16/20.',
                    '/'.join(str(len(counts[s])) for s in files.SPLITS))

  splits, unreadable, converted = {}, [], 0
  for s in files.SPLITS:
    splits[s], n_converted, bad = prepared.decode_classes(raw.splits[s], image_size,
                                                          f'{NAME}/{s}', crop)
    converted += n_converted
    unreadable += bad
  prepared.refuse_unreadable(unreadable, skip_unreadable,
                             'Replace or delete these files (and their CSV lines)')
  if converted:
    logging.info('Converted %d grey-scale or non-RGB images to RGB.', converted)
  del raw  # the pickles' arrays; only the resized copies are needed from here

  class_names = tuple(n for s in files.SPLITS for n in splits[s].class_names)
  metadata = {'source': fingerprint,
              'class_counts': {s: splits[s].class_counts().tolist() for s in files.SPLITS},
              'unreadable_left_out': len(unreadable)}
  return prepared.write(
      lambda tmp: MiniImagenet(splits=splits, class_names=class_names, image_size=image_size,
                               encoding=encoding, metadata=metadata, data_dir=tmp,
                               config=tfds.core.BuilderConfig(name=f'{image_size}px')),
      out, target)


def prepared_sizes(data_dir: str) -> list[int]:
  """Image sizes for which `data_dir` holds a complete prepared MiniImagenet."""
  sizes = []
  for path in glob.glob(os.path.join(data_dir, NAME, '*px', VERSION, 'dataset_info.json')):
    name = os.path.basename(os.path.dirname(os.path.dirname(path)))
    if name[:-2].isdigit():
      sizes.append(int(name[:-2]))
  return sorted(sizes)


def subset_indices(counts: list[int], per_class: int, seed: int,
                   class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Record indices and labels of a seeded subset of `per_class` images per class (0: all).

  Classes are written consecutively in record order.
  """
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
  indices, labels = [], []
  for c, (start, count) in enumerate(zip(starts, counts, strict=True)):
    chosen = seeded_subset(count, per_class, seed, class_names[c])
    indices.append(start + chosen)
    labels.append(np.full(len(chosen), c, np.int32))
  return np.concatenate(indices), np.concatenate(labels)


def load_split(split: str, image_size: int, *, data_dir: str, images_per_class: int,
               subset_seed: int) -> FewShotSplit:
  """Reads one prepared split from `data_dir` (the configured `data.dir`; '' for TFDS's
  default), keeping a seeded subset of `images_per_class` per class (0: all)."""
  if split not in files.SPLITS:
    raise ValueError(f'Unknown split {split!r}; choose one of {files.SPLITS}.')
  configured, data_dir = data_dir, tfds_source.data_dir_from_config(data_dir)
  sizes = prepared_sizes(data_dir)
  if not sizes:
    raise DataError(
        f'No prepared MiniImagenet in data.dir={configured or data_dir!r} (looked for '
        f'{os.path.join(data_dir, NAME, "<S>px", VERSION)}). Prepare it once with '
        f'`python -m autoaug_jax.data.prepare --source=YOUR_MINIIMAGENET_FOLDER '
        f'--out=DATA_DIR --image_size={image_size}` and pass --config.data.dir=DATA_DIR.')
  stored = image_size if image_size in sizes else next(
      (s for s in sizes if s > image_size), sizes[-1])
  if stored != image_size:
    logging.warning('MiniImagenet is prepared at %s px, not %d; resizing %d px images at load. '
                    'Prepare with --image_size=%d to skip this.', sizes, image_size, stored,
                    image_size)
  path = version_dir(data_dir, stored)
  metadata = prepared.read_metadata(path) or {}
  if 'class_counts' not in metadata:
    raise DataError(f'{path} has no class_counts metadata: it was not written by '
                    '`autoaug_jax.data.prepare`. Prepare the dataset again.')
  source = tfds_source.open_source(f'{NAME}/{stored}px:{VERSION}', split, data_dir)
  counts = metadata['class_counts'][split]
  all_names = source.dataset_info.features['label'].names
  offset = sum(len(metadata['class_counts'][s]) for s in files.SPLITS[:files.SPLITS.index(split)])
  class_names = all_names[offset:offset + len(counts)]
  indices, labels = subset_indices(counts, images_per_class, subset_seed, class_names)
  if len(source) != sum(counts):
    raise DataError(f'{path}: split {split!r} holds {len(source)} records but its metadata says '
                    f'{sum(counts)}. The folder is damaged; prepare the dataset again.')
  if len(indices) < sum(counts):
    logging.info('%s/%s: kept a seeded subset of %d images per class (data.images_per_class), '
                 '%d of %d.', NAME, split, images_per_class, len(indices),
                 sum(counts))
  images = np.empty((len(indices), image_size, image_size, 3), np.uint8)

  def read(start: int) -> None:
    batch = source.__getitems__(indices[start:start + 256].tolist())
    for j, example in enumerate(batch):
      got = int(example['label']) - offset
      if got != labels[start + j]:
        raise DataError(f'{path}: record {indices[start + j]} has label {got}, expected '
                        f'{labels[start + j]} from the class order. Prepare the dataset again.')
      images[start + j] = image_ops.resize(example['image'], image_size)

  # Decoding dominates and PIL releases the GIL: read 256-record chunks on all cores.
  image_ops.parallel_map(read, range(0, len(indices), 256))
  return FewShotSplit(images=images, labels=labels, class_names=list(class_names),
                      name=f'{NAME}/{split}')
