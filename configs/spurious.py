r"""Where the learned augmenter reliably beats no augmentation: a spurious support colour.

The paper's motivating case (its Section 1): every support image's background
is tinted with a colour tied to its class (data.spurious = 1.0), and the
queries are not, so a classifier trained on the support set alone learns the
colour instead of the glyph. It is the one setting of the CPU-scale studies in
experiments/ where meta-training the augmenter helps significantly and in every
seed: 3 seeds, 100 paired test tasks each, learned vs none +2.73 pp
[+0.73, +4.73] (seeds +3.20, +2.73, +2.27), recovering about 12% of the 22 pp
the colour costs. The augmenter learns to strip the colour from the synthetic
images (see the report's image grid). Without the colour the same training
gives no gain (experiments/training_length, experiments/spurious).

This is the `s10` run of experiments/spurious at seed 0: configs/sweep_cpu.py
(default.py's task, 32x32 glyphs, I = 20, B = 4) at the paper's 500
meta-steps, the final checkpoint, the four baselines. On 2 CPU cores it takes
about 25 minutes. It is the same config as experiments/spurious/s10/seed0
(a test checks it), whose report gave learned +3.20 pp [+0.96, +5.44] on
this repository's machine; runs repeat exactly on one machine, and another
CPU rounds differently. Other seeds: --config.seed=1 or 2.

  python -m autoaug_jax.main --config=configs/spurious.py --workdir=runs/spurious
"""

import os

from autoaug_jax.config.schema import config_from_file, lock


def get_config():
  config = config_from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         'sweep_cpu.py'))
  with config.unlocked():
    config.data.spurious = 1.0
    config.num_meta_steps = 500
    config.checkpoint_every = 25
    config.eval.methods = ('none', 'duplicate', 'fixed', 'random_convnet', 'learned')
    config.eval.report_note = (
        'The spurious-correlation case of the paper\'s Section 1 (configs/spurious.py): '
        'each class\'s support images carry a background colour of their own and the '
        'queries do not, so training on the support set alone learns the colour. This '
        'is the setting where the learned augmenter beat no augmentation significantly '
        'in every seed of experiments/spurious (+2.73 pp [+0.73, +4.73] over 3 seeds), '
        'by stripping the colour from its synthetic images; without the colour it gives '
        'no gain.')
  return lock(config)
