"""Writing a few-shot dataset once, as TFDS array_record, atomically: what `prepare` shares.

Both sources `python -m autoaug_jax.data.prepare` converts (MiniImagenet's
split files, `mini_imagenet.py`; class-folder trees of one's own images,
`image_folders.py`) end in the same steps: decode and check every image,
resize it once, then write a TFDS dataset whose examples are in class order
(`disable_shuffling`) with the per-class counts in its metadata, so a loader
can read a seeded subset of each class without decoding the rest.

Writing goes into a hidden temporary folder inside `--out`, held by a lock
while its conversion lives, and the finished version folder is renamed into
place at the end: an interrupted conversion never leaves a dataset that
looks complete, and the next one removes its leftovers. Preparing the same
source again is a no-op (the source's fingerprint is in the metadata); a
different one needs `--overwrite`.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from autoaug_jax.data import images as image_ops
from autoaug_jax.data.mini_imagenet_files import RawClass
from autoaug_jax.data.split import FewShotSplit
from autoaug_jax.errors import DataError

ENCODINGS = ('png', 'jpeg')
_TMP_PREFIX = '.prepare-tmp-'


class FewShotBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A few-shot dataset handed over in memory: images already decoded, checked and resized.

  Subclasses name the dataset (`name`) and may set VERSION and DESCRIPTION.
  `splits` maps TFDS split names to `FewShotSplit`s whose labels index their
  own `class_names`; stored labels index `class_names` of the whole dataset.
  """

  VERSION = tfds.core.Version('1.0.0')
  DESCRIPTION = 'Few-shot image classes, written by autoaug_jax.data.prepare.'

  def __init__(self, *, splits: dict[str, FewShotSplit] | None = None,
               class_names: tuple[str, ...] = (), image_size: int = 84,
               encoding: str = 'png', metadata: dict | None = None, **kwargs):
    self._splits = splits
    self._class_names = tuple(class_names)
    self._image_size = image_size
    self._encoding = encoding
    self._extra_metadata = metadata or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self._image_size
    metadata = tfds.core.MetadataDict()
    metadata.update(self._extra_metadata)
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3), encoding_format=self._encoding),
            'label': tfds.features.ClassLabel(names=list(self._class_names)),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        metadata=metadata)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything was read and checked before the builder was made
    if self._splits is None:
      raise DataError(f'{self.name} is made by `python -m autoaug_jax.data.prepare`; it has '
                      'nothing to download.')
    return {name: self._generate_examples(split) for name, split in self._splits.items()}

  def _generate_examples(self, split: FewShotSplit):
    offset = {n: i for i, n in enumerate(self._class_names)}
    order = np.argsort(split.labels, kind='stable')
    for start in range(0, len(order), 1024):
      chunk = order[start:start + 1024]
      # PNG/JPEG encoders release the GIL: encode a chunk on all cores.
      encoded = image_ops.parallel_map(
          lambda i: image_ops.encode(split.images[i], self._encoding), chunk)
      for key, (i, data) in enumerate(zip(chunk, encoded, strict=True), start):
        yield key, {'image': data, 'label': offset[split.class_names[split.labels[i]]]}


def check_settings(image_size: int, encoding: str, crop: str) -> None:
  """Refuses impossible conversion flags before any file is read."""
  if image_size < 8:
    raise DataError(f'--image_size={image_size} is too small; use at least 8 (the paper: 128).')
  if encoding not in ENCODINGS:
    raise DataError(f"--encoding={encoding!r}: choose 'png' (lossless) or 'jpeg'.")
  if crop not in image_ops.CROPS:
    raise DataError(f"--crop={crop!r}: choose 'squash' (whole image, aspect not kept) or "
                    "'center' (the central square).")


def builder_class(name: str) -> type[FewShotBuilder]:
  """A `FewShotBuilder` writing the dataset `name` (not registered: TFDS later reads it
  back from its files by name, as any prepared dataset in a data_dir)."""
  return type(f'FewShot_{name}', (FewShotBuilder,), {'name': name}, skip_registration=True)


def decode_classes(raw_classes: list[RawClass], size: int, split_name: str,
                   crop: str = 'squash') -> tuple[FewShotSplit, int, list[str]]:
  """Decodes and resizes one split's classes.

  Returns the split of every readable image, how many were converted to RGB
  (grey-scale, palette, CMYK, alpha), and 'PATH (why)' for each unreadable file.
  """
  jobs = [(c, i) for c, cls in enumerate(raw_classes) for i in range(len(cls))]

  def decode(job):
    c, i = job
    cls = raw_classes[c]
    if cls.arrays is not None:
      return image_ops.fit(cls.arrays[i], size, crop), False, None
    try:
      rgb, converted = image_ops.read_file(cls.paths[i])
    except ValueError as e:
      return None, False, f'{cls.paths[i]} ({e})'
    return image_ops.fit(rgb, size, crop), converted, None

  results = image_ops.parallel_map(decode, jobs)
  keep = [(job, r) for job, r in zip(jobs, results, strict=True) if r[2] is None]
  images = np.stack([r[0] for _, r in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
  labels = np.array([job[0] for job, _ in keep], np.int32)
  split = FewShotSplit(images=images, labels=labels,
                       class_names=[c.name for c in raw_classes], name=split_name)
  return split, sum(r[1] for _, r in keep), [r[2] for r in results if r[2] is not None]


def refuse_unreadable(unreadable: list[str], skip_unreadable: bool, fix: str) -> None:
  """Stops on undecodable images (listed) unless `--skip_unreadable`, then logs them."""
  if not unreadable:
    return
  listing = '; '.join(unreadable[:10]) + ('; ...' if len(unreadable) > 10 else '')
  if not skip_unreadable:
    raise DataError(f'{len(unreadable)} images could not be decoded: {listing}. {fix}, or pass '
                    '--skip_unreadable to leave them out.')
  logging.warning('Left out %d unreadable images: %s', len(unreadable), listing)


def read_metadata(path: str) -> dict | None:
  """The metadata.json TFDS keeps in a prepared version folder, or None."""
  try:
    with open(os.path.join(path, 'metadata.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def existing_is_same(target: str, fingerprint: dict, overwrite: bool, what: str) -> bool:
  """True if `target` already holds this very dataset (nothing to do). Raises DataError,
  before anything is written, if it holds another one and `overwrite` is off."""
  if not os.path.exists(target) or overwrite:
    return False
  existing = (read_metadata(target) or {}).get('source')
  if existing == json.loads(json.dumps(fingerprint)):
    logging.info('%s already holds this dataset; nothing to do (--overwrite rebuilds it).',
                 target)
    return True
  held = (f'{what} prepared from {existing.get("layout", "other")} files' if existing
          else 'something that is not a dataset written by this command')
  raise DataError(f'{target} already holds a different dataset ({held}). Choose another '
                  '--out (or --name), or pass --overwrite to replace it.')


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


def write(make_builder: Callable[[str], FewShotBuilder], out: str, target: str) -> str:
  """Builds `make_builder(tmp_data_dir)` into a locked temporary folder of `out`, then
  renames its version folder to `target`. Returns `target`."""
  os.makedirs(out, exist_ok=True)
  _clean_stale_tmp(out)
  tmp, lock = _lock_tmp(out)
  try:
    builder = make_builder(tmp)
    builder.download_and_prepare(file_format='array_record')
    _swap_in(str(builder.data_dir), target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    os.close(lock)
  logging.info('Wrote %s (the TFDS lines above name a temporary folder that was renamed to '
               'this one).', target)
  return target
