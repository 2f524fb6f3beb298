r"""Entry point: convert MiniImagenet files into the TFDS dataset training reads.

  python -m autoaug_jax.data.prepare --source=~/data/mini-imagenet \
      --out=~/tensorflow_datasets --image_size=128

then train with `--config.data.name=mini_imagenet --config.data.dir=OUT`
(and `--config.image_size` equal to the prepared size). The source layout
(learn2learn pickles, CSV + images/, or RFS pickles) is detected. Flags only;
`mini_imagenet.prepare` does the work.
"""

import sys

from absl import app, flags, logging

from autoaug_jax.data import mini_imagenet
from autoaug_jax.errors import DataError

_SOURCE = flags.DEFINE_string('source', None, 'Folder holding the MiniImagenet split files.')
_OUT = flags.DEFINE_string('out', None, 'TFDS data_dir to write mini_imagenet/<S>px into.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 84, 'Square size to resize to (paper: 128).')
_ENCODING = flags.DEFINE_enum('encoding', 'png', ['png', 'jpeg'],
                              'Stored image encoding: png is lossless, jpeg ~4x smaller.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Replace a different dataset already prepared at --out.')
_SKIP_UNREADABLE = flags.DEFINE_bool('skip_unreadable', False,
                                     'Leave out images that cannot be decoded instead of '
                                     'stopping.')
flags.mark_flags_as_required(['source', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    path = mini_imagenet.prepare(_SOURCE.value, _OUT.value, _IMAGE_SIZE.value,
                                 encoding=_ENCODING.value, overwrite=_OVERWRITE.value,
                                 skip_unreadable=_SKIP_UNREADABLE.value)
  except DataError as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  print(path)


if __name__ == '__main__':
  app.run(main)
