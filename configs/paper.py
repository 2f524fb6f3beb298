r"""The paper's Section 4.1 settings, for accelerators.

3-way 5-shot 5-query, 20 inner SGD steps, meta-batch 4, 500 outer steps,
128x128 images, 100 test tasks. Until the MiniImagenet loader lands this runs
on the embedded glyph dataset at 128x128 (add --config.data.name=... then).

  python -m autoaug_jax.main --config=configs/paper.py --workdir=runs/paper
"""

from autoaug_jax.config_schema import base_config, lock


def get_config():
  config = base_config()
  config.image_size = 128
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
