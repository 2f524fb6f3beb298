r"""Entry point: convert a dataset on disk, once, into the TFDS dataset training reads.

MiniImagenet, in any of its three layouts (learn2learn pickles, CSV + images/,
RFS pickles):

  python -m autoaug_jax.data.prepare --source=~/data/mini-imagenet \
      --out=~/tensorflow_datasets --image_size=128

then train with `--config.data.name=mini_imagenet --config.data.dir=OUT`
(and `--config.image_size` equal to the prepared size).

Your own images, one folder per class (`ROOT/<class>/*.jpg`, or already split
as `ROOT/train|val|test/<class>/*.jpg`):

  python -m autoaug_jax.data.prepare --source=~/data/flowers \
      --out=~/tensorflow_datasets --image_size=84 [--name=flowers] [--crop=center]

then train with `--config.data.name=tfds --config.data.tfds.name=flowers
--config.data.dir=OUT`. The layout is detected: MiniImagenet's split files
first, else class folders. Flags only; `mini_imagenet.prepare` and
`image_folders.prepare` do the work.
"""

import os
import sys

import tensorflow_datasets as tfds
from absl import app, flags, logging

from autoaug_jax.data import image_folders, images, mini_imagenet, mini_imagenet_files, prepared
from autoaug_jax.errors import DataError

_SOURCE = flags.DEFINE_string('source', None, 'Folder holding MiniImagenet split files, or '
                              'class folders (ROOT/<class>/ or ROOT/train|val|test/<class>/).')
_OUT = flags.DEFINE_string('out', None, 'TFDS data_dir to write the dataset into.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 84, 'Square size to resize to (paper: 128).')
_NAME = flags.DEFINE_string('name', '', 'Class folders only: the TFDS dataset name (default: '
                            "the source folder's name, lower-case, e.g. my_flowers).")
_CROP = flags.DEFINE_enum('crop', 'squash', list(images.CROPS),
                          'How a non-square image becomes square: squash it whole (as '
                          "MiniImagenet's tool did) or cut its central square.")
_ENCODING = flags.DEFINE_enum('encoding', 'png', ['png', 'jpeg'],
                              'Stored image encoding: png is lossless, jpeg ~4x smaller.')
_MIN_IMAGES = flags.DEFINE_integer(
    'min_images_per_class', image_folders.DEFAULT_MIN_IMAGES,
    'Class folders only: refuse classes with fewer images (K + Q of the tasks you will run).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Replace a different dataset already prepared at --out.')
_SKIP_UNREADABLE = flags.DEFINE_bool('skip_unreadable', False,
                                     'Leave out images that cannot be decoded instead of '
                                     'stopping.')
flags.mark_flags_as_required(['source', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  tfds.disable_progress_bar()  # one bar per split and shard would drown the log
  source = os.path.expanduser(_SOURCE.value)
  try:
    prepared.check_settings(_IMAGE_SIZE.value, _ENCODING.value, _CROP.value)
    if mini_imagenet_files.has_split_files(source):
      if _NAME.value:
        raise DataError(f'{source} holds MiniImagenet split files, which are always written as '
                        'mini_imagenet/<S>px; drop --name (it names class-folder datasets).')
      path = mini_imagenet.prepare(source, _OUT.value, _IMAGE_SIZE.value,
                                   encoding=_ENCODING.value, overwrite=_OVERWRITE.value,
                                   skip_unreadable=_SKIP_UNREADABLE.value, crop=_CROP.value)
    else:
      path = image_folders.prepare(source, _OUT.value, _IMAGE_SIZE.value, name=_NAME.value,
                                   crop=_CROP.value, encoding=_ENCODING.value,
                                   overwrite=_OVERWRITE.value,
                                   skip_unreadable=_SKIP_UNREADABLE.value,
                                   min_images=_MIN_IMAGES.value)
      logging.info('Train on it with --config.data.name=tfds --config.data.tfds.name=%s '
                   '--config.data.dir=%s --config.image_size=%d', os.path.basename(
                       os.path.dirname(path)), os.path.dirname(os.path.dirname(path)),
                   _IMAGE_SIZE.value)
  except DataError as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  print(path)


if __name__ == '__main__':
  app.run(main)
