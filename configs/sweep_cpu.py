r"""Base of the CPU-scale studies in experiments/: the main job (default.py), shrunk.

The embedded glyph dataset at 32x32, 20 inner SGD steps and meta-batch 4 as in
default.py, but 40 meta-steps and no meta-validation (the paper also reports
its final checkpoints), 100 test tasks, and every method evaluated, test-time
adaptation (2 steps) included.
One 3-way 5-shot run takes about 5 minutes on 2 CPU cores.

  python experiments/run_sweep.py --sweep=support_size --base=configs/sweep_cpu.py \
      --root=runs/sweeps

One member by hand (K = 1 of the support-size study):

  python -m autoaug_jax.main --config=configs/sweep_cpu.py --workdir=runs/sweep_k1 \
      --config.task.k_shot=1
"""

import os

from autoaug_jax.config.schema import EVAL_METHODS, config_from_file, lock


def get_config():
  config = config_from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         'default.py'))
  with config.unlocked():
    config.num_meta_steps = 40
    config.eval.val_every = 0
    config.eval.num_tasks = 100
    config.eval.methods = EVAL_METHODS  # the baselines, learned and adapted
    config.eval.adapt_steps = 2
    config.checkpoint_every = 10
  return lock(config)
