"""MiniImagenet as a TFDS dataset: the one-time conversion and the loader training reads.

Data flow: files on disk (`mini_imagenet_files`) -> `prepare` (decode, check,
resize once, write a TFDS `mini_imagenet/{S}px` dataset in array_record
format) -> `load_split` (random access through `tfds.data_source`, no
TensorFlow) -> `FewShotSplit` -> the on-device task sampler.

Conversion writes into a hidden temporary folder inside `--out` and renames
the finished version folder into place at the end, so an interrupted run
never leaves a dataset that looks complete. Examples are written in class
order (`disable_shuffling`) and the per-class counts are kept in the
dataset's metadata: the loader can then read a seeded subset of each class
(the paper's 60 images per class) without decoding the other 540, and checks
every label it decodes against that order.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import json
import os
import shutil

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from autoaug_jax.data import images as image_ops
from autoaug_jax.data import mini_imagenet_files as files
from autoaug_jax.data import tfds_source
from autoaug_jax.data.split import FewShotSplit, seeded_subset
from autoaug_jax.errors import DataError

NAME = 'mini_imagenet'
# Bump when the written format changes; the loader refuses other versions.
VERSION = '1.0.0'
_TMP_PREFIX = '.prepare-tmp-'


@dataclasses.dataclass
class MiniImagenetConfig(tfds.core.BuilderConfig):
  """One prepared size; the splits themselves are handed over in memory by `prepare`."""
  image_size: int = 84
  encoding: str = 'png'
  class_names: tuple[str, ...] = ()


class MiniImagenet(tfds.core.GeneratorBasedBuilder):
  """MiniImagenet (Vinyals et al. 2016; Ravi & Larochelle split), built from manual files."""

  VERSION = tfds.core.Version(VERSION)
  # Configs are made per prepared size by `prepare` (and read back from the
  # folder's own metadata), so none is predeclared.
  BUILDER_CONFIGS = []
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Run `python -m autoaug_jax.data.prepare --source=DIR --out=DATA_DIR`, where DIR holds '
      'MiniImagenet as learn2learn pickles, train/val/test.csv with images/, or RFS pickles.')

  def __init__(self, *, splits: dict[str, FewShotSplit] | None = None,
               metadata: dict | None = None, **kwargs):
    self._splits = splits
    self._extra_metadata = metadata or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    metadata = tfds.core.MetadataDict()
    metadata.update(self._extra_metadata)
    return tfds.core.DatasetInfo(
        builder=self,
        description='MiniImagenet few-shot classes, one split per class set.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3), encoding_format=(
                self.builder_config.encoding)),
            'label': tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        metadata=metadata)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything was read and checked before the builder was made
    if self._splits is None:
      raise DataError(self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {name: self._generate_examples(split) for name, split in self._splits.items()}

  def _generate_examples(self, split: FewShotSplit):
    # Labels are global class ids; the split's classes are consecutive from `offset`.
    offset = list(self.builder_config.class_names).index(split.class_names[0])
    order = np.argsort(split.labels, kind='stable')
    encoding = self.builder_config.encoding
    for start in range(0, len(order), 1024):
      chunk = order[start:start + 1024]
      # PNG/JPEG encoders release the GIL: encode a chunk on all cores.
      encoded = image_ops.parallel_map(lambda i: image_ops.encode(split.images[i], encoding),
                                       chunk)
      for key, (i, data) in enumerate(zip(chunk, encoded, strict=True), start):
        yield key, {'image': data, 'label': int(split.labels[i]) + offset}


def _decode_split(raw_classes: list[files.RawClass], size: int, split: str,
                  skip_unreadable: bool) -> tuple[FewShotSplit, int, list[str]]:
  """Decodes and resizes one split; returns it, the number of non-RGB images, unreadable files."""
  jobs = [(c, i) for c, cls in enumerate(raw_classes) for i in range(len(cls))]

  def decode(job):
    c, i = job
    cls = raw_classes[c]
    if cls.arrays is not None:
      return image_ops.resize(cls.arrays[i], size), False, None
    try:
      rgb, converted = image_ops.read_file(cls.paths[i])
    except ValueError as e:
      return None, False, f'{cls.paths[i]} ({e})'
    return image_ops.resize(rgb, size), converted, None

  results = image_ops.parallel_map(decode, jobs)
  bad = [r[2] for r in results if r[2] is not None]
  keep = [(job, r) for job, r in zip(jobs, results, strict=True) if r[2] is None]
  if bad and not skip_unreadable:
    return None, 0, bad
  images = np.stack([r[0] for _, r in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
  labels = np.array([job[0] for job, _ in keep], np.int32)
  split_obj = FewShotSplit(images=images, labels=labels,
                           class_names=[c.name for c in raw_classes], name=f'{NAME}/{split}')
  return split_obj, sum(r[1] for _, r in keep), bad


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


def _read_metadata(path: str) -> dict | None:
  try:
    with open(os.path.join(path, 'metadata.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _lock_tmp(out: str) -> tuple[str, int]:
  """Makes this conversion's temporary folder, held by an exclusive lock while we live."""
  tmp = os.path.join(out, f'{_TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}')
  os.makedirs(tmp)
  fd = os.open(os.path.join(tmp, '.lock'), os.O_CREAT | os.O_RDWR)
  fcntl.flock(fd, fcntl.LOCK_EX)
  return tmp, fd


def _clean_stale_tmp(out: str) -> None:
  """Removes temporary folders of conversions that were killed (their lock is free)."""
  for tmp in glob.glob(os.path.join(out, _TMP_PREFIX + '*')):
    try:
      fd = os.open(os.path.join(tmp, '.lock'), os.O_RDWR)
    except OSError:  # no lock file: killed before it was made
      shutil.rmtree(tmp, ignore_errors=True)
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      continue  # another conversion is running into it
    else:
      shutil.rmtree(tmp, ignore_errors=True)
    finally:
      os.close(fd)


def _swap_in(new: str, target: str) -> None:
  """Renames `new` to `target`; an existing target is moved aside and restored on failure."""
  os.makedirs(os.path.dirname(target), exist_ok=True)
  old = None
  if os.path.exists(target):
    old = f'{target}.old-{os.getpid()}'
    os.replace(target, old)
  try:
    os.replace(new, target)
  except BaseException:
    if old is not None:
      os.replace(old, target)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def prepare(source: str, out: str, image_size: int = 84, *, encoding: str = 'png',
            overwrite: bool = False, skip_unreadable: bool = False) -> str:
  """Converts MiniImagenet files under `source` into `out/mini_imagenet/{S}px/1.0.0`.

  Returns the prepared folder. Raises DataError (nothing written) on bad input,
  or if `out` already holds a different MiniImagenet at this size and
  `overwrite` is False. Preparing the same source again is a no-op unless
  `overwrite` is set.
  """
  if image_size < 8:
    raise DataError(f'--image_size={image_size} is too small; use at least 8 (the paper: 128).')
  if encoding not in ('png', 'jpeg'):
    raise DataError(f"--encoding={encoding!r}: choose 'png' (lossless) or 'jpeg'.")
  out = os.path.abspath(os.path.expanduser(out))
  raw = files.read_source(os.path.expanduser(source))
  fingerprint = _fingerprint(raw, image_size, encoding, skip_unreadable)
  target = version_dir(out, image_size)
  if os.path.exists(target) and not overwrite:
    existing = (_read_metadata(target) or {}).get('source')
    if existing == json.loads(json.dumps(fingerprint)):
      logging.info('%s already holds this dataset; nothing to do (--overwrite rebuilds it).',
                   target)
      return target
    what = (f'MiniImagenet prepared from {existing["layout"]} files' if existing
            else 'something that is not a dataset written by this command')
    raise DataError(f'{target} already holds a different dataset ({what}). Choose another '
                    '--out, or pass --overwrite to replace it.')

  counts = {s: [len(c) for c in raw.splits[s]] for s in files.SPLITS}
  logging.info('Found MiniImagenet (%s layout) in %s: %s classes, %s images.', raw.layout,
               raw.root, '/'.join(str(len(counts[s])) for s in files.SPLITS),
               '/'.join(str(sum(counts[s])) for s in files.SPLITS))
  if [len(counts[s]) for s in files.SPLITS] != [64, 16, 20]:
    logging.warning('The split files hold %s classes, not the standard 64/16/20.',
                    '/'.join(str(len(counts[s])) for s in files.SPLITS))

  splits, unreadable, converted = {}, [], 0
  for s in files.SPLITS:
    splits[s], n_converted, bad = _decode_split(raw.splits[s], image_size, s, skip_unreadable)
    converted += n_converted
    unreadable += bad
  if unreadable and not skip_unreadable:
    raise DataError(f'{len(unreadable)} images could not be decoded: ' + '; '.join(unreadable[:10])
                    + ('; ...' if len(unreadable) > 10 else '') + '. Replace or delete these '
                    'files (and their CSV lines), or pass --skip_unreadable to leave them out.')
  if unreadable:
    logging.warning('Left out %d unreadable images: %s', len(unreadable), unreadable[:10])
  if converted:
    logging.info('Converted %d grey-scale or non-RGB images to RGB.', converted)
  del raw  # the pickles' arrays; only the resized copies are needed from here

  class_names = tuple(n for s in files.SPLITS for n in splits[s].class_names)
  metadata = {'source': fingerprint,
              'class_counts': {s: splits[s].class_counts().tolist() for s in files.SPLITS},
              'unreadable_left_out': len(unreadable)}
  os.makedirs(out, exist_ok=True)
  _clean_stale_tmp(out)
  tmp, lock = _lock_tmp(out)
  try:
    builder = MiniImagenet(
        splits=splits, metadata=metadata, data_dir=tmp,
        config=MiniImagenetConfig(name=f'{image_size}px', image_size=image_size,
                                  encoding=encoding, class_names=class_names))
    builder.download_and_prepare(file_format='array_record')
    _swap_in(version_dir(tmp, image_size), target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    os.close(lock)
  logging.info('Wrote MiniImagenet to %s (the TFDS lines above name a temporary folder that '
               'was renamed to this one).', target)
  return target


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
  metadata = _read_metadata(path) or {}
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
