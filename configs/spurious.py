r"""Where the learned augmenter reliably beats no augmentation: a spurious support colour.

The paper's motivating case (its Section 1): every support image's background
is tinted with a colour tied to its class, and the queries are not, so a
classifier trained on the support set alone learns the colour instead of the
glyph. At half strength (data.spurious = 0.5) the learned augmenter gains
more than in any other setting in experiments/: 3 seeds, 100 paired test
tasks each, learned vs none +6.49 pp [+3.95, +9.03] (seeds +8.33, +6.67,
+4.47), recovering 39% [26%, 53%] of the 16.5 pp the colour costs. It
replaces the background's colour in its synthetic images and keeps the glyph
(see the report's image grid). At full strength (--config.data.spurious=1.0)
it gains less, positive in every seed and significant in two: +2.73 pp
[+0.73, +4.73], 12% of the cost. Without the colour the same training gives
no gain (experiments/training_length, experiments/spurious).

This is the `s05` run of experiments/spurious at seed 0: configs/sweep_cpu.py
(default.py's task, 32x32 glyphs, I = 20, B = 4) at the paper's 500
meta-steps, the final checkpoint, the four baselines. On 2 CPU cores it takes
about 20 minutes. It is the same config as experiments/spurious/s05/seed0
(a test checks it), whose report gave learned +8.33 pp [+5.25, +11.41] on
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
    config.data.spurious = 0.5
    config.num_meta_steps = 500
    config.checkpoint_every = 25
    config.eval.methods = ('none', 'duplicate', 'fixed', 'random_convnet', 'learned')
    config.eval.report_note = (
        'The spurious-correlation case of the paper\'s Section 1 (configs/spurious.py): '
        'each class\'s support images carry a background colour of their own, here at '
        'half strength, and the queries do not, so training on the support set alone '
        'learns the colour. This is the setting where the learned augmenter gained most '
        'over no augmentation in experiments/spurious (+6.49 pp [+3.95, +9.03] over 3 '
        'seeds, each seed significant), by replacing the colour in its synthetic images; '
        'without the colour it gives no gain.')
  return lock(config)
