r"""Entry point: evaluate a checkpoint of a workdir without retraining.

  python -m autoaug_jax.evaluate --workdir=runs/default [--checkpoint=best|latest|STEP] \
      [--config.eval.num_tasks=500 --config.task.k_shot=1 ...] [--out_dir=DIR]

Reads WORKDIR/config.json, restores the checkpoint (default: the best one,
or the latest for a run trained without meta-validation) and writes
report.md, deltas.png, augmentations.png and results.json into
WORKDIR/eval_<checkpoint>_step<N>[__<overrides>]/ (or --out_dir). The
`--config.KEY=VALUE` overrides may change what does not change the trained
parameters: eval.*, task.* (e.g. train at K = 5, evaluate at K = 1), data.*
(a moved data folder, or another dataset's classes: cross-domain
evaluation), inner.*, device layout and weight directories that moved. Any
other key is refused before anything is restored. Several hosts: add the
cluster flags of `cluster_flags` (every process restores; process 0 writes).
"""

from absl import app, flags
from ml_collections import config_flags

from autoaug_jax import cluster_flags
from autoaug_jax.config.schema import base_config
from autoaug_jax.run import evaluate

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory of a training run.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', '', "'best', 'latest' or a step number (default: best if the run validated, "
    'else latest).')
# The workdir's config.json is the base; these flags only name the keys to change.
_CONFIG = config_flags.DEFINE_config_dict(
    'config', base_config(), 'Overrides of the run\'s config for this evaluation: '
    '--config.KEY=VALUE.', lock_config=True)
_OUT_DIR = flags.DEFINE_string('out_dir', '', 'Where to write the report.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  cluster_flags.run(lambda: evaluate.evaluate_checkpoint(_WORKDIR.value, _CHECKPOINT.value,
                                                        _OUT_DIR.value, overrides))


if __name__ == '__main__':
  app.run(main)
