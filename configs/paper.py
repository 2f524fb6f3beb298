r"""The paper's Section 4.1 settings on MiniImagenet, for accelerators.

3-way 5-shot 5-query, 20 inner SGD steps, meta-batch 4, 500 outer steps,
128x128 images, 60 images per class (a seeded subset of the 600), 100 test
tasks. Prepare MiniImagenet once (any of its three common layouts), then run:

  python -m autoaug_jax.data.prepare --source=PATH/TO/mini-imagenet \
      --out=~/tensorflow_datasets --image_size=128
  python -m autoaug_jax.main --config=configs/paper.py --workdir=runs/paper

Add --config.data.images_per_class=0 for all 600 images per class,
--config.data.dir=DIR if --out was not ~/tensorflow_datasets, or
--config.data.name=glyphs to run the same settings on the embedded dataset.
"""

from autoaug_jax.config.schema import base_config, lock


def get_config():
  config = base_config()
  config.image_size = 128
  config.data.name = 'mini_imagenet'
  config.data.images_per_class = 60
  config.task.n_way, config.task.k_shot, config.task.q_query = 3, 5, 5
  config.inner.steps = 20
  config.meta_batch_size = 4
  config.num_meta_steps = 500
  config.augmenter.factor = 1
  config.augmenter.noise_std = 0.1  # variance 0.01 (Section 4.4)
  config.eval.num_tasks = 100
  config.eval.val_every = 50
  config.eval.val_tasks = 100
  config.checkpoint_every = 50
  return lock(config)
