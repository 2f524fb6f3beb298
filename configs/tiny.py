r"""A seconds-long run for tests and smoke checks: tiny images, tasks and models.

  python -m autoaug_jax.main --config=configs/tiny.py --workdir=/tmp/autoaug_tiny

Also as two processes of two CPU devices each (README: "Multiple devices and
hosts"), I = 0 and 1:

  python -m autoaug_jax.main --config=configs/tiny.py --workdir=/tmp/autoaug_tiny_mh \
      --config.num_cpu_devices=2 --coordinator_address=127.0.0.1:12345 \
      --num_processes=2 --process_id=I
"""

from autoaug_jax.config.schema import base_config, lock


def get_config():
  config = base_config()
  config.image_size = 16
  config.data.images_per_class = 8
  config.task.n_way, config.task.k_shot, config.task.q_query = 3, 2, 2
  config.classifier.widths = (4, 8, 8)
  config.classifier.hidden = 8
  config.augmenter.latent_channels = 4
  config.inner.steps = 3
  config.meta_batch_size = 4  # splits over 1, 2 or 4 devices (two processes x two)
  config.num_meta_steps = 4
  config.eval.num_tasks = 6
  config.eval.batch_size = 6
  config.eval.val_every = 2
  config.eval.val_tasks = 4
  config.log_every = 1
  config.checkpoint_every = 2
  return lock(config)
