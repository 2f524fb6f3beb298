"""Any image-classification dataset already in a local TFDS `data_dir`, as a few-shot source.

Data flow: `tfds.data_source` (array_record, random access, no TensorFlow) ->
decode and resize every image once on the host -> split the *classes* into
meta-train / meta-val / meta-test -> `FewShotSplit` -> the task sampler.

Few-shot learning needs disjoint classes, not TFDS's train/test images, so
the TFDS splits named in `data.tfds.splits` (default: all of them) are pooled
first and the class split comes from the config: explicit class lists
(`data.tfds.{train,val,test}_classes`, names or ids), else the split a
dataset prepared from train/val/test folders records (`image_folders`), else
a seeded split by `data.tfds.proportions`; `data.tfds.class_split=all_test`
makes every class a test class, for evaluating on another dataset. Nothing
is ever downloaded (`download=False`); a dataset that is missing, or prepared
in the tfrecord format that only TensorFlow reads, is refused with where we
looked and how to fix it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from autoaug_jax.data import images as image_ops
from autoaug_jax.data.split import FewShotSplit, host_available_bytes, seeded_subset
from autoaug_jax.errors import DataError

SPLITS = ('train', 'val', 'test')


def data_dir_from_config(configured: str) -> str:
  """`data.dir`, or TFDS's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets), absolute."""
  path = configured or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  return os.path.abspath(os.path.expanduser(path))


def _diagnose(name: str, data_dir: str, error: Exception) -> DataError:
  """Turns a failed `tfds.data_source` into a message that says what to do."""
  where = data_dir
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except Exception as e:  # unknown name or config: TFDS's own message lists close names
    return DataError(f'data.tfds.name={name!r} is not a TFDS dataset TFDS knows ({e}).')
  path = str(builder.data_dir)
  build = (f'`tfds build {name} --data_dir={where} --file_format=array_record` on a machine '
           'with internet access and TensorFlow, then copy the folder here')
  parent = os.path.dirname(path)
  versions = sorted(v for v in os.listdir(parent)
                    if os.path.isfile(os.path.join(parent, v, 'dataset_info.json'))
                    ) if os.path.isdir(parent) else []
  if not os.path.isdir(path) and versions:
    return DataError(f'{parent} holds version(s) {versions} of {name!r}, not '
                     f'{os.path.basename(path)} that TFDS asked for. Name one, e.g. '
                     f"--config.data.tfds.name='{name.split(':')[0]}:{versions[-1]}'.")
  if not os.path.isdir(path):
    return DataError(f'TFDS dataset {name!r} is not prepared in data.dir={where!r} (looked in '
                     f'{path}). Nothing is downloaded at run time: prepare it with {build}, and '
                     'pass --config.data.dir=THAT_DATA_DIR.')
  file_format = getattr(builder.info.file_format, 'value', builder.info.file_format)
  if file_format is not None and file_format != 'array_record':
    return DataError(f'{path} is prepared as {file_format}, which only TensorFlow reads; '
                     f'random access needs array_record. Rebuild it with {build}.')
  return DataError(f'Could not read TFDS dataset {name!r} from {path}: '
                   f'{type(error).__name__}: {error}')


def open_source(name: str, split: str, data_dir: str):
  """`tfds.data_source` with downloads off and errors that name the fix."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, try_gcs=False)
  except Exception as e:
    raise _diagnose(name, data_dir, e) from e


def _info(name: str, data_dir: str):
  try:
    return tfds.builder(name, data_dir=data_dir, try_gcs=False).info
  except Exception as e:
    raise _diagnose(name, data_dir, e) from e


@functools.lru_cache(maxsize=2)
def _pooled(name: str, data_dir: str, splits: str, image_key: str, label_key: str,
            image_size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict | None]:
  """Every distinct image of the named TFDS splits, decoded and resized once per process.

  Returns images [n, S, S, 3] uint8, labels [n] int64 TFDS label ids, the
  names of all label ids, and the class split the dataset's metadata records
  (a prepared train/val/test folder tree), if any. Exact duplicates (same label and pixels) are kept
  once: some datasets ship splits that are subsets of others (Omniglot's
  `small1`/`small2` of `train`), and a repeated image could land in both a
  task's support and its query set.
  """
  info = _info(name, data_dir)
  features = info.features
  for key, role in ((image_key, 'image_key'), (label_key, 'label_key')):
    if key not in features:
      raise DataError(f'data.tfds.{role}={key!r} is not a feature of {name}; it has '
                      f'{sorted(features.keys())}.')
  label_feature = features[label_key]
  is_class_label = isinstance(label_feature, tfds.features.ClassLabel)
  names = tuple(label_feature.names) if is_class_label else ()
  split_names = splits.split('+') if splits else sorted(info.splits.keys())
  if not split_names:
    open_source(name, 'train', data_dir)  # a dataset that is not there says so first
    raise DataError(f'TFDS dataset {name} lists no splits; set data.tfds.splits, e.g. '
                    "'train+test'.")
  sources = [(split, open_source(name, split, data_dir)) for split in split_names]
  total = sum(len(source) for _, source in sources)
  if not total:
    raise DataError(f'TFDS dataset {name} (splits {split_names}) holds no examples.')
  need = total * image_size * image_size * 3
  free = host_available_bytes()
  if free is not None and need > 0.5 * free:
    raise DataError(
        f'Decoding all {total} images of {name} ({"+".join(split_names)}) at {image_size} px '
        f'needs {need / 2**30:.2f} GiB, more than half of the {free / 2**30:.2f} GiB of '
        'available host memory. Pool fewer TFDS splits (data.tfds.splits) or lower image_size.')
  images = np.empty((total, image_size, image_size, 3), np.uint8)
  labels = np.empty(total, np.int64)
  jobs, offset = [], 0
  for split, source in sources:
    jobs += [(split, source, start, offset + start) for start in range(0, len(source), 256)]
    offset += len(source)

  def read(job) -> None:
    split, source, start, pos = job
    for i in range(start, min(start + 256, len(source))):
      example = source[i]
      try:
        rgb, _ = image_ops.to_rgb_array(np.asarray(example[image_key]))
      except ValueError as e:
        raise DataError(f'{name}/{split}: feature {image_key!r} is not an image ({e}); set '
                        'data.tfds.image_key to the image feature.') from e
      images[pos + i - start] = image_ops.resize(rgb, image_size)
      labels[pos + i - start] = int(example[label_key])

  image_ops.parallel_map(read, jobs)  # PIL decodes without the GIL
  seen, keep = set(), []
  for i in range(total):
    digest = (int(labels[i]), hashlib.blake2b(images[i].tobytes(), digest_size=16).digest())
    if digest not in seen:
      seen.add(digest)
      keep.append(i)
  if len(keep) < total:
    logging.info('%s: kept %d distinct images of %d (the pooled splits overlap).', name,
                 len(keep), total)
    images, labels = images[keep], labels[keep]
  if not names:
    names = tuple(str(i) for i in range(int(labels.max()) + 1))
  return images, labels, names, (info.metadata or {}).get('class_split') or None


def clear_cache() -> None:
  _pooled.cache_clear()


def _resolve(entries, names: tuple[str, ...], key: str) -> list[int]:
  ids = []
  for entry in entries:
    if isinstance(entry, str) and entry in names:
      ids.append(names.index(entry))
    elif isinstance(entry, int) or (isinstance(entry, str) and entry.isdigit()):
      if not 0 <= int(entry) < len(names):
        raise DataError(f'data.tfds.{key}: class id {entry} is outside [0, {len(names)}).')
      ids.append(int(entry))
    else:
      raise DataError(f'data.tfds.{key}: {entry!r} is not a class of this dataset; classes are '
                      f'e.g. {list(names[:8])}.')
  return ids


@dataclasses.dataclass(frozen=True)
class ClassSplit:
  """How a dataset's classes are divided into the few-shot splits.

  classes: split -> explicit class names or label ids (`data.tfds.<split>_classes`;
    these win when given); mode: 'auto' (the split the dataset records, if a
    prepared folder tree did, else proportions), 'proportions', or 'all_test'
    (every class is a test class); proportions: (train, val, test) fractions of
    the classes, drawn with `seed`.
  """
  classes: dict[str, tuple]
  proportions: tuple[float, float, float] = (0.64, 0.16, 0.20)
  seed: int = 0
  mode: str = 'auto'


def class_split(present: np.ndarray, names: tuple[str, ...], spec: ClassSplit,
                recorded: dict[str, list[str]] | None = None) -> dict[str, list[int]]:
  """Label ids of each few-shot split: explicit lists, else as `spec.mode` says.

  `recorded`: the class split a prepared dataset carries in its metadata
  (split -> class names), used by mode 'auto'.
  """
  explicit = {s: tuple(spec.classes.get(s, ())) for s in SPLITS}
  if any(explicit.values()):
    if not explicit['train'] or not explicit['test']:
      raise DataError('Explicit class lists need at least data.tfds.train_classes and '
                      'data.tfds.test_classes (val_classes may stay empty).')
    out = {s: _resolve(explicit[s], names, f'{s}_classes') for s in SPLITS}
    seen: dict[int, str] = {}
    for s in SPLITS:
      for c in out[s]:
        if c in seen:
          raise DataError(f'Class {names[c]!r} is in both data.tfds.{seen[c]}_classes and '
                          f'data.tfds.{s}_classes; few-shot splits need disjoint classes.')
        seen[c] = s
    return out
  if spec.mode == 'all_test':
    return {'train': [], 'val': [], 'test': np.sort(present).tolist()}
  if spec.mode == 'auto' and recorded:
    return {s: _resolve(recorded.get(s, ()), names, f'{s}_classes (recorded)') for s in SPLITS}
  props = tuple(float(p) for p in spec.proportions)
  if len(props) != 3 or min(props) < 0 or abs(sum(props) - 1) > 1e-6:
    raise DataError(f'data.tfds.proportions={props} must be three non-negative fractions '
                    '(train, val, test) summing to 1.')
  order = np.random.default_rng(spec.seed).permutation(np.sort(present))
  n = len(order)
  n_val, n_test = (max(int(round(p * n)), 1 if p > 0 else 0) for p in props[1:])
  if n - n_val - n_test < 1:
    raise DataError(f'{n} classes cannot be split by data.tfds.proportions={props}.')
  return {'train': order[:n - n_val - n_test].tolist(),
          'val': order[n - n_val - n_test:n - n_test].tolist(),
          'test': order[n - n_test:].tolist()}


def load_split(split: str, image_size: int, *, name: str, data_dir: str, images_per_class: int,
               subset_seed: int, division: ClassSplit, source_splits: str = '',
               image_key: str = 'image', label_key: str = 'label') -> FewShotSplit:
  """One few-shot split of the TFDS dataset `name` (e.g. 'cifar100') in `data_dir`.

  `division`: how classes are split; `source_splits`: the TFDS splits pooled before
  the class split ('' = all);
  `images_per_class`: a seeded subset per class (0 = all).
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; choose one of {SPLITS}.')
  data_dir = data_dir_from_config(data_dir)
  images, labels, names, recorded = _pooled(name, data_dir, source_splits, image_key,
                                            label_key, image_size)
  ids = class_split(np.unique(labels), names, division, recorded)[split]
  if not ids and division.mode == 'all_test' and not any(division.classes.values()):
    raise DataError(f'data.tfds.class_split=all_test makes every class of {name} a test class, '
                    f'so there are no {split} classes: it is for evaluating a trained augmenter '
                    '(python -m autoaug_jax.evaluate --workdir=W --config.data...). To train on '
                    f'{name}, use class_split=auto or proportions.')
  if not ids:
    raise DataError(f'The {split} split of {name} has no classes; set '
                    f'data.tfds.{split}_classes (or eval.val_every=0 to skip validation).')
  if recorded and division.mode == 'auto' and not any(division.classes.values()):
    logging.log_first_n(logging.INFO, '%s: the class split its folders recorded (%s).', 1,
                        name, ', '.join(f'{len(recorded.get(s, ()))} {s}' for s in SPLITS))
  chosen, new_labels = [], []
  for new, c in enumerate(ids):
    members = np.flatnonzero(labels == c)
    keep = seeded_subset(len(members), images_per_class, subset_seed, names[c])
    chosen.append(members[keep])
    new_labels.append(np.full(len(keep), new, np.int32))
  index = np.concatenate(chosen)
  return FewShotSplit(images=images[index], labels=np.concatenate(new_labels),
                      class_names=[names[c] for c in ids], name=f'{name}/{split}')
