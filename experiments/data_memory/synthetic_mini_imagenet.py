r"""Writes a full-size stand-in for MiniImagenet (learn2learn layout) to measure memory and time.

100 classes x 600 images of 84x84 RGB, split 64/16/20 like Ravi & Larochelle,
as `mini-imagenet-cache-{train,validation,test}.pkl` (1.27 GB in all). The
pixels are smooth random patterns plus noise, so PNG sizes and decode times
are of the same order as real photographs; they are not real images.

  python experiments/data_memory/synthetic_mini_imagenet.py --out=/tmp/mi_synthetic
  python -m autoaug_jax.data.prepare --source=/tmp/mi_synthetic --out=/tmp/mi_tfds \
      --image_size=128
  python -m autoaug_jax.benchmark --config=configs/paper.py --data_only \
      --config.data.dir=/tmp/mi_tfds [--config.data.images_per_class=0]
"""

import os
import pickle

import numpy as np
from absl import app, flags
from PIL import Image

_OUT = flags.DEFINE_string('out', None, 'Folder to write the three pickles into.')
_PER_CLASS = flags.DEFINE_integer('per_class', 600, 'Images per class.')
flags.mark_flags_as_required(['out'])


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
  out = np.empty((n, 84, 84, 3), np.uint8)
  for i in range(n):
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((84, 84), Image.Resampling.BICUBIC))
    noise = rng.normal(0, 6, (84, 84, 3))
    out[i] = np.clip(smooth + noise, 0, 255).astype(np.uint8)
  return out


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  rng = np.random.default_rng(0)
  n = _PER_CLASS.value
  first = 0
  for split, count in (('train', 64), ('validation', 16), ('test', 20)):
    names = [f'n{first + c:08d}' for c in range(count)]
    first += count
    data = {'image_data': _images(rng, count * n),
            'class_dict': {name: list(range(c * n, (c + 1) * n)) for c, name in enumerate(names)}}
    with open(os.path.join(_OUT.value, f'mini-imagenet-cache-{split}.pkl'), 'wb') as f:
      pickle.dump(data, f, protocol=4)


if __name__ == '__main__':
  app.run(main)
