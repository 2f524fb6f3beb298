r"""The main job: meta-train the ConvNet augmenter on the embedded glyph dataset, on a CPU.

3-way 5-shot 5-query tasks at 32x32, 20 inner SGD steps, meta-batch 4, 150
meta-steps, then the paired evaluation of every method on 100 meta-test tasks.
About 8 minutes on 2 CPU cores (see BUILD_NOTES.md).

  python -m autoaug_jax.main --config=configs/default.py --workdir=runs/default
"""

from autoaug_jax.config.schema import base_config, lock


def get_config():
  config = base_config()
  config.image_size = 32
  config.task.n_way, config.task.k_shot, config.task.q_query = 3, 5, 5
  config.inner.steps = 20
  config.meta_batch_size = 4
  config.num_meta_steps = 150
  config.eval.val_every = 50
  config.eval.val_tasks = 40
  config.checkpoint_every = 20
  # CPU speed (BUILD_NOTES.md): one JAX device per core (no effect on
  # accelerators). task_chunk and conv_impl are 'auto': one task at a time and
  # patches + matmul on CPU, one vmap per device on GPU/TPU.
  config.num_cpu_devices = 2
  return lock(config)
