"""Your own images as a few-shot dataset: class-folder trees read, checked and prepared.

The way most researchers hold a dataset of their own is one folder per class:

- flat: `ROOT/<class>/...`; the classes are split into meta-train/val/test
  at training time, by `data.tfds.proportions` (seeded) or explicit lists;
- split: `ROOT/train/<class>/...`, `ROOT/val/<class>/...` (or `validation`,
  `valid`), `ROOT/test/<class>/...`; the folders' class split is kept (val
  may be missing).

Images may sit in nested sub-folders of their class, in any common format
and case of extension; hidden files and non-images are skipped and counted.
Every problem with a tree (an empty class, a class with too few images for
a task, a class in two splits, a split folder without classes, no image at
all, undecodable files) is refused with the folder or file named and the
fix, before anything is written. `prepare` then writes a TFDS dataset NAME
(`prepared`) that training reads with `--config.data.name=tfds
--config.data.tfds.name=NAME`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import tensorflow_datasets as tfds
from absl import logging

from autoaug_jax.data import prepared
from autoaug_jax.data.mini_imagenet_files import SPLITS, RawClass
from autoaug_jax.data.split import host_available_bytes
from autoaug_jax.errors import DataError

VERSION = '1.0.0'
# Extensions PIL decodes that image datasets use, compared in lower case.
IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff',
                              '.ppm', '.pgm', '.pbm'})
# Accepted spellings of each split folder, compared in lower case.
SPLIT_FOLDERS = {'train': ('train', 'training'), 'val': ('val', 'validation', 'valid'),
                 'test': ('test', 'testing')}
# The flat layout's single TFDS split: its classes are divided at training time.
ALL = 'images'  # TFDS reserves 'all'
# 5-shot 5-query, the default task.
DEFAULT_MIN_IMAGES = 10


@dataclasses.dataclass
class Tree:
  """A class-folder tree, read and checked; images not yet decoded.

  splits: TFDS split name ('train'/'val'/'test', or 'all' for a flat tree) ->
  its classes, each with its image paths in sorted order.
  """
  layout: str  # 'split folders' or 'class folders'
  root: str
  splits: dict[str, list[RawClass]]
  skipped: dict[str, int]  # why ('hidden', 'not an image', ...) -> files or folders

  @property
  def num_images(self) -> int:
    return sum(len(c) for classes in self.splits.values() for c in classes)


def _visible(names) -> list[str]:
  return sorted(n for n in names if not n.startswith('.'))


def _split_of(folder: str) -> str | None:
  return next((s for s, names in SPLIT_FOLDERS.items() if folder.lower() in names), None)


def _class_images(folder: str, skipped: dict[str, int]) -> list[str]:
  """Image paths under a class folder, nested sub-folders included, sorted by path."""
  paths = []
  for parent, dirs, names in os.walk(folder):
    hidden = [d for d in dirs if d.startswith('.')]
    skipped['hidden'] += len(hidden)
    dirs[:] = _visible(dirs)
    for name in sorted(names):
      if name.startswith('.'):
        skipped['hidden'] += 1
      elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        paths.append(os.path.join(parent, name))
      else:
        skipped['not an image'] += 1
  return sorted(paths)


def _folders_and_files(folder: str) -> tuple[list[str], list[str]]:
  """The visible entries of `folder`, sorted: sub-folder names, then other names."""
  entries = _visible(os.listdir(folder))
  folders = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
  return folders, [e for e in entries if e not in folders]


def _classes(folder: str, skipped: dict[str, int]) -> list[RawClass]:
  names, loose = _folders_and_files(folder)
  skipped['outside a class folder'] += len(loose)
  classes = [RawClass(name, paths=_class_images(os.path.join(folder, name), skipped))
             for name in names]
  empty = [os.path.join(folder, c.name) for c in classes if not len(c)]
  if empty:
    raise DataError(f'{len(empty)} class folder(s) hold no image: {", ".join(empty[:10])}. Add '
                    f'images ({", ".join(sorted(IMAGE_EXTENSIONS))}) or remove the folders.')
  return classes


def read_tree(source: str) -> Tree:
  """Detects the layout of the class-folder tree `source` and lists its images."""
  root = os.path.abspath(os.path.expanduser(source))
  if not os.path.isdir(root):
    raise DataError(f'--source={source!r} is not a folder. Pass the folder holding one '
                    'sub-folder per class (or train/, val/, test/ with the classes).')
  skipped = {'hidden': 0, 'not an image': 0, 'outside a class folder': 0}
  folders, loose = _folders_and_files(root)
  if not folders:
    images = [e for e in loose if os.path.splitext(e)[1].lower() in IMAGE_EXTENSIONS]
    if images:
      raise DataError(f'{root} holds {len(images)} images but no class folders. Put each '
                      'class in a folder of its own: ROOT/<class>/*.jpg.')
    raise DataError(f'{root} holds no image and no class folder. Expected ROOT/<class>/*.jpg '
                    'or ROOT/train|val|test/<class>/*.jpg.')
  split_names = {f: _split_of(f) for f in folders}
  if any(split_names.values()):
    others = [f for f, s in split_names.items() if s is None]
    if others:
      raise DataError(
          f'{root} mixes split folders ({", ".join(f for f in folders if split_names[f])}) '
          f'with other folders ({", ".join(others[:10])}). Put every class folder under '
          'train/, val/ or test/, or none of them (a flat tree, split at training time).')
    splits, where = {}, {}
    skipped['outside a class folder'] += len(loose)
    for folder, split in split_names.items():
      if split in where:
        raise DataError(f'{root} has two {split} folders ({where[split]} and {folder}); merge '
                        'them or rename one.')
      where[split] = folder
      splits[split] = _classes(os.path.join(root, folder), skipped)
      if not splits[split]:
        raise DataError(f'Split folder {os.path.join(root, folder)} holds no class folders. '
                        f'Put its classes in it as {folder}/<class>/*.jpg, or remove it.')
    missing = [s for s in ('train', 'test') if s not in splits]
    if missing:
      raise DataError(f'{root} has {" and ".join(where.values())}/ but no '
                      f'{" or ".join(missing)}/ folder; a split tree needs train/ and test/ '
                      '(val/ is optional). Add it, or make the tree flat (ROOT/<class>/) and '
                      'let training split the classes.')
    owner: dict[str, str] = {}
    for split in SPLITS:
      for c in splits.get(split, []):
        if c.name in owner:
          raise DataError(
              f'Class {c.name!r} is in both {where[owner[c.name]]}/ and {where[split]}/: '
              'meta-train, meta-val and meta-test classes must be disjoint. Move or rename '
              'one of them.')
        owner[c.name] = split
    tree = Tree('split folders', root, {s: splits[s] for s in SPLITS if s in splits}, skipped)
  else:
    classes = _classes(root, skipped)
    if len(classes) == 1:
      only = os.path.join(root, classes[0].name)
      raise DataError(f'{root} holds a single class folder ({classes[0].name}); a few-shot '
                      f'dataset needs many classes. Did you mean --source={only}?')
    tree = Tree('class folders', root, {ALL: classes}, skipped)
  return tree


def check_counts(tree: Tree, counts: dict[str, list[int]], min_images: int) -> None:
  """Refuses classes with fewer than `min_images` images (K + Q of the tasks to run)."""
  short = [(c.name, n) for split, classes in tree.splits.items()
           for c, n in zip(classes, counts[split], strict=True) if n < min_images]
  if short:
    fewest = min(n for _, n in short)
    listing = ', '.join(f'{name} ({n})' for name, n in short[:20])
    usable = (f' (e.g. --config.task.k_shot=1 --config.task.q_query={fewest - 1})'
              if fewest > 1 else ', which no task can (K and Q are at least 1)')
    raise DataError(
        f'{len(short)} classes have fewer than --min_images_per_class={min_images} images '
        f'(a task takes K + Q images of each class; the default 5-shot 5-query task, 10): '
        f'{listing}{", ..." if len(short) > 20 else ""}. Tasks with them can take at most '
        f'K + Q = {fewest} images per class{usable}. Add images or remove these folders, or '
        'lower --min_images_per_class for smaller tasks.')


def check_name(name: str) -> str:
  """A valid TFDS dataset name that is not one of TFDS's own."""
  if not re.fullmatch(r'[a-z][a-z0-9_]*', name):
    raise DataError(f'--name={name!r} is not a valid TFDS dataset name: use lower-case letters, '
                    f'digits and underscores, starting with a letter (e.g. '
                    f'{default_name(name) or "my_images"}).')
  if name == 'mini_imagenet' or name in tfds.list_builders(with_community_datasets=False):
    raise DataError(f'--name={name} is a dataset TFDS (or autoaug_jax) already defines, so '
                    f'TFDS would read it with that definition; choose another, e.g. '
                    f'--name={name}_folders.')
  return name


def default_name(source: str) -> str:
  """The source folder's name as a TFDS name ('My Flowers-2' -> 'my_flowers_2')."""
  base = os.path.basename(os.path.normpath(os.path.abspath(os.path.expanduser(source))))
  name = re.sub(r'[^a-z0-9]+', '_', base.lower()).strip('_')
  return name if name[:1].isalpha() else f'images_{name}'.rstrip('_')


def _fingerprint(tree: Tree, size: int, encoding: str, crop: str, skip_unreadable: bool) -> dict:
  """What a prepared folder was made from: every file's path, size and mtime, hashed."""
  listing = hashlib.sha1()
  for split, classes in tree.splits.items():
    for c in classes:
      for path in c.paths:
        st = os.stat(path)
        listing.update(f'{split}\0{c.name}\0{os.path.relpath(path, tree.root)}\0{st.st_size}\0'
                       f'{st.st_mtime_ns}\n'.encode())
  return {'layout': tree.layout, 'root': tree.root, 'files_sha1': listing.hexdigest(),
          'classes': {s: [c.name for c in classes] for s, classes in tree.splits.items()},
          'images': tree.num_images, 'image_size': size, 'encoding': encoding, 'crop': crop,
          'skip_unreadable': skip_unreadable}


def version_dir(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, name, VERSION)


def prepare(source: str, out: str, image_size: int, *, name: str = '', crop: str = 'squash',
            encoding: str = 'png', overwrite: bool = False, skip_unreadable: bool = False,
            min_images: int = DEFAULT_MIN_IMAGES) -> str:
  """Converts the class-folder tree `source` into the TFDS dataset `out/NAME/1.0.0`.

  Returns the prepared folder. Raises DataError, with nothing written, on a bad
  tree or if `out` already holds another NAME and `overwrite` is off.
  """
  prepared.check_settings(image_size, encoding, crop)
  name = check_name(name or default_name(source))
  out = os.path.abspath(os.path.expanduser(out))
  tree = read_tree(source)
  check_counts(tree, {s: [len(c) for c in classes] for s, classes in tree.splits.items()},
               min_images)
  need, free = tree.num_images * image_size * image_size * 3, host_available_bytes()
  if free is not None and need > 0.5 * free:
    raise DataError(f'{tree.num_images} images at {image_size} px need {need / 2**30:.2f} GiB '
                    f'in memory while they are written, more than half of the {free / 2**30:.2f} '
                    'GiB available. Prepare at a smaller --image_size, or on a larger machine.')
  fingerprint = _fingerprint(tree, image_size, encoding, crop, skip_unreadable)
  target = version_dir(out, name)
  if prepared.existing_is_same(target, fingerprint, overwrite, name):
    return target
  classes = (f'{len(tree.splits[ALL])} classes' if ALL in tree.splits else
             ' / '.join(f'{len(c)} {s}' for s, c in tree.splits.items()) + ' classes')
  logging.info('Found %s in %s: %s, %d images; skipped %s.', tree.layout, tree.root, classes,
               tree.num_images, ', '.join(f'{n} {why}' for why, n in tree.skipped.items()))

  splits, unreadable, converted = {}, [], 0
  for s, classes in tree.splits.items():
    splits[s], n_converted, bad = prepared.decode_classes(classes, image_size, f'{name}/{s}',
                                                          crop)
    converted += n_converted
    unreadable += bad
  prepared.refuse_unreadable(unreadable, skip_unreadable, 'Replace or delete these files')
  counts = {s: split.class_counts().tolist() for s, split in splits.items()}
  if unreadable:  # classes may have lost images
    check_counts(tree, counts, min_images)
  if converted:
    logging.info('Converted %d grey-scale, palette, CMYK or alpha images to RGB.', converted)

  class_names = tuple(n for split in splits.values() for n in split.class_names)
  metadata = {'source': fingerprint, 'class_counts': counts,
              'unreadable_left_out': len(unreadable), 'skipped': tree.skipped}
  if tree.layout == 'split folders':  # training keeps this class split (data.tfds.class_split)
    metadata['class_split'] = {s: split.class_names for s, split in splits.items()}
  builder = prepared.builder_class(name)
  return prepared.write(
      lambda tmp: builder(splits=splits, class_names=class_names, image_size=image_size,
                          encoding=encoding, metadata=metadata, data_dir=tmp),
      out, target)
