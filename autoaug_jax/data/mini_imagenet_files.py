"""Reading MiniImagenet as researchers hold it on disk, in any of its three common layouts.

First step of `python -m autoaug_jax.data.prepare` (which then resizes and
writes a TFDS dataset, `autoaug_jax.data.mini_imagenet`). The layout is
detected from file names, in the source folder or one level below it:

1. learn2learn pickles `mini-imagenet-cache-{train,validation,test}.pkl`
   (`-val` also accepted): dict with `image_data` uint8 [n, 84, 84, 3] and
   `class_dict` {wnid: [indices]}.
2. Ravi & Larochelle CSV files `train.csv`, `val.csv`, `test.csv`
   (`filename,label`) with the JPEGs in `images/` (or `images/{label}/`,
   `{split}/{label}/`, `{label}/`).
3. MetaOptNet / RFS pickles `miniImageNet_category_split_{train_phase_train,
   val,test}.pickle` (keys `data`, `labels`, `catname2label`; Python 2
   pickles read as latin-1).

The split files define the Ravi & Larochelle 64/16/20 class split. Every
problem users meet with these files (an HTML page saved under a pickle's
name, a truncated download, a missing or renamed split file, classes in two
splits, arrays of the wrong shape) is refused here with the file named and
the fix, before anything is written. Pickles are read with an unpickler that
only builds numpy arrays and plain containers, so a foreign pickle cannot
run code.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle

import numpy as np

from autoaug_jax.errors import DataError

SPLITS = ('train', 'val', 'test')

# Per layout and split, the accepted file names (first match wins).
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    'learn2learn': {
        'train': ('mini-imagenet-cache-train.pkl',),
        'val': ('mini-imagenet-cache-validation.pkl', 'mini-imagenet-cache-val.pkl'),
        'test': ('mini-imagenet-cache-test.pkl',),
    },
    'csv': {
        'train': ('train.csv',),
        'val': ('val.csv', 'validation.csv'),
        'test': ('test.csv',),
    },
    'rfs': {
        'train': ('miniImageNet_category_split_train_phase_train.pickle',),
        'val': ('miniImageNet_category_split_val.pickle',),
        'test': ('miniImageNet_category_split_test.pickle',),
    },
}
# Approximate full sizes, quoted when a file looks truncated.
_FULL_SIZE_HINT = {'train': '~813 MB', 'val': '~203 MB', 'test': '~254 MB'}


@dataclasses.dataclass
class RawClass:
  """One class as found on disk: decoded arrays (pickles) or image paths (CSV)."""
  name: str
  arrays: np.ndarray | None = None  # [m, H, W, 3] uint8
  paths: list[str] | None = None

  def __len__(self) -> int:
    return len(self.arrays) if self.arrays is not None else len(self.paths)


@dataclasses.dataclass
class RawSource:
  """A MiniImagenet source folder, read and checked; images not yet decoded or resized."""
  layout: str
  root: str
  files: dict[str, str]  # split -> path of its split file
  splits: dict[str, list[RawClass]]


def has_split_files(source: str) -> bool:
  """Whether `source` or a folder directly below it holds any MiniImagenet split file
  (then it is read as MiniImagenet, not as a tree of class folders)."""
  if not os.path.isdir(source):
    return False
  names = {n for layout in LAYOUTS.values() for split in layout.values() for n in split}
  return any(names & set(os.listdir(folder)) for folder in _candidate_folders(source))


def _candidate_folders(source: str) -> list[str]:
  """`source` and its visible sub-folders, where split files are looked for."""
  return [source] + sorted(
      os.path.join(source, d) for d in os.listdir(source)
      if os.path.isdir(os.path.join(source, d)) and not d.startswith('.'))


def _find_layout(source: str) -> tuple[str, str, dict[str, str]]:
  """(layout, folder, {split: file}) for the first complete layout; DataError otherwise."""
  if not os.path.isdir(source):
    raise DataError(f'MiniImagenet source {source!r} is not a folder. Pass --source=DIR, the '
                    'folder holding the split files (pickles or train/val/test.csv).')
  folders = _candidate_folders(source)
  partial = []
  for folder in folders:
    present = set(os.listdir(folder))
    for layout, names in LAYOUTS.items():
      found = {s: next((n for n in names[s] if n in present), None) for s in SPLITS}
      if all(found.values()):
        return layout, folder, {s: os.path.join(folder, n) for s, n in found.items()}
      if any(found.values()):
        partial.append((layout, folder, found))
  if partial:
    layout, folder, found = partial[0]
    have = ', '.join(n for n in found.values() if n)
    missing = ' and '.join(' or '.join(LAYOUTS[layout][s]) for s in SPLITS if not found[s])
    raise DataError(
        f'{folder} holds {have} ({layout} layout) but not {missing}. MiniImagenet needs all '
        'three split files (Ravi & Larochelle 64/16/20 classes); restore the missing one, or '
        'rename it if it was saved under another name.')
  expected = '; '.join(f'{k}: ' + ', '.join(v[0] for v in names.values())
                       for k, names in LAYOUTS.items())
  raise DataError(f'No MiniImagenet split files in {source} or its subfolders. Expected one '
                  f'of these layouts — {expected} (with images/ for csv).')


class _ArrayUnpickler(pickle.Unpickler):
  """Builds numpy arrays and plain containers only; refuses any other class."""
  _ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
      ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
      ('numpy', 'ndarray'), ('numpy', 'dtype'), ('collections', 'OrderedDict'),
      ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
      ('_codecs', 'encode'), ('builtins', 'bytearray'),
  }

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'refusing to build {module}.{name}')


def load_pickle(path: str, split: str) -> object:
  """Reads a dataset pickle, turning every way a download goes wrong into a DataError."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(512)
    if not head:
      raise DataError(f'{path} is empty (0 bytes). Download it again.')
    if head.lstrip()[:1] == b'<':
      raise DataError(
          f'{path} is an HTML page, not a pickle ({size} bytes starting with '
          f'{head.lstrip()[:40]!r}): the download saved a web page, such as a cloud drive\'s '
          'quota or virus-scan notice, under the pickle\'s name. Download the real file again '
          '(for Google Drive, confirm the "download anyway" page) and check its size.')
    f.seek(0)
    try:
      return _ArrayUnpickler(f, encoding='latin1').load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, MemoryError) as e:
      if 'refusing to build' in str(e):
        raise DataError(f'{path} is not a MiniImagenet pickle: it contains objects other than '
                        f'arrays ({e}). Check that this is the right file.') from e
      raise DataError(
          f'{path} is truncated or corrupt ({size:,} bytes; the full {split} file is '
          f'{_FULL_SIZE_HINT[split]}): {type(e).__name__}: {e}. Download it again and compare '
          'its size or checksum with the source.') from e


def _check_images(path: str, images) -> np.ndarray:
  if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
    shape = getattr(images, 'shape', type(images).__name__)
    hint = (' It looks channels-first; MiniImagenet pickles are channels-last.'
            if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1] == 3
            else '')
    raise DataError(f'{path}: images must be an array [n, H, W, 3], got {shape}.{hint} '
                    'Check that this is a MiniImagenet pickle.')
  if images.dtype != np.uint8:
    raise DataError(f'{path}: images must be uint8 pixels, got {images.dtype}. Check that '
                    'this is an unnormalised MiniImagenet pickle.')
  return images


def _require_dict(path: str, obj, keys: tuple[str, ...]) -> dict:
  if not isinstance(obj, dict) or any(k not in obj for k in keys):
    got = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise DataError(f'{path}: expected a dict with keys {list(keys)}, got {got}. Is this the '
                    'right file for its layout (see `autoaug_jax.data.mini_imagenet_files`)?')
  return obj


def _take(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """images[idx], as a view (no copy) when idx is a contiguous run, as it usually is."""
  if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
    return images[idx[0]:idx[0] + idx.size]
  return images[idx]


def _read_learn2learn(path: str, split: str) -> list[RawClass]:
  obj = _require_dict(path, load_pickle(path, split), ('image_data', 'class_dict'))
  images = _check_images(path, obj['image_data'])
  classes = []
  for name, indices in obj['class_dict'].items():
    idx = np.asarray(indices, np.int64)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(images))):
      raise DataError(f'{path}: class {name!r} lists image indices outside [0, {len(images)}); '
                      'the file is inconsistent. Download it again.')
    classes.append(RawClass(str(name), arrays=_take(images, idx)))
  return classes


def _read_rfs(path: str, split: str) -> list[RawClass]:
  obj = _require_dict(path, load_pickle(path, split), ('data', 'labels', 'catname2label'))
  images = _check_images(path, np.asarray(obj['data']))
  labels = np.asarray(obj['labels'], np.int64)
  if labels.shape != (len(images),):
    raise DataError(f'{path}: {labels.size} labels for {len(images)} images. Download the file '
                    'again.')
  names = {int(v): str(k) for k, v in obj['catname2label'].items()}
  unknown = sorted(set(np.unique(labels).tolist()) - set(names))
  if unknown:
    raise DataError(f'{path}: labels {unknown[:5]} have no entry in catname2label. Download the '
                    'file again.')
  return [RawClass(names[c], arrays=_take(images, np.flatnonzero(labels == c)))
          for c in np.unique(labels)]


def _read_csv(path: str, split: str) -> list[RawClass]:
  folder = os.path.dirname(path)
  rows = []
  # utf-8-sig: CSVs saved from spreadsheets start with a byte-order mark.
  with open(path, newline='', encoding='utf-8-sig') as f:
    for i, row in enumerate(csv.reader(f)):
      if i == 0 and [c.strip().lower() for c in row[:2]] == ['filename', 'label']:
        continue
      if len(row) < 2 or not row[0]:
        if not any(row):
          continue
        raise DataError(f'{path}, line {i + 1}: expected "filename,label", got {row!r}.')
      rows.append((row[0].strip(), row[1].strip()))
  if not rows:
    raise DataError(f'{path} lists no images. Expected lines "filename,label".')
  by_class: dict[str, list[str]] = {}
  missing = []
  for filename, label in rows:
    candidates = (os.path.join(folder, 'images', filename),
                  os.path.join(folder, 'images', label, filename),
                  os.path.join(folder, split, label, filename),
                  os.path.join(folder, label, filename))
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
      missing.append(candidates[0])
    by_class.setdefault(label, []).append(found)
  if missing:
    raise DataError(f'{len(missing)} images listed in {path} are missing, e.g. {missing[:3]}. '
                    f'Put the JPEGs in {os.path.join(folder, "images")}/ (or '
                    f'{split}/<label>/), as the CSV files expect.')
  return [RawClass(name, paths=paths) for name, paths in by_class.items()]


_READERS = {'learn2learn': _read_learn2learn, 'csv': _read_csv, 'rfs': _read_rfs}


def read_source(source: str) -> RawSource:
  """Detects the layout under `source`, reads every split and checks the class split."""
  layout, root, files = _find_layout(source)
  splits = {s: _READERS[layout](files[s], s) for s in SPLITS}
  owner: dict[str, str] = {}
  for s in SPLITS:
    for c in splits[s]:
      if c.name in owner:
        raise DataError(
            f'Class {c.name!r} appears in both {files[owner[c.name]]} and {files[s]}: '
            'meta-train, meta-val and meta-test classes must be disjoint. Use the original '
            'Ravi & Larochelle split files.')
      owner[c.name] = s
      if not len(c):
        raise DataError(f'Class {c.name!r} in {files[s]} has no images. Remove it from the '
                        'split file or restore its images.')
  return RawSource(layout, root, files, splits)
