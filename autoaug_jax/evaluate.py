"""Entry point: evaluate a checkpoint of a workdir without retraining.

  python -m autoaug_jax.evaluate --workdir=runs/default [--checkpoint=best|latest|STEP] \
      [--num_tasks=500] [--out_dir=DIR]

Reads WORKDIR/config.json, restores the chosen checkpoint and writes
report.md, deltas.png, augmentations.png and results.json into
WORKDIR/eval_<checkpoint>/ (or --out_dir).
"""

import sys

from absl import app, flags, logging

from autoaug_jax import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory of a training run.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_NUM_TASKS = flags.DEFINE_integer('num_tasks', None, 'Override eval.num_tasks.')
_OUT_DIR = flags.DEFINE_string('out_dir', '', 'Where to write the report.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  overrides = {} if _NUM_TASKS.value is None else {'eval.num_tasks': _NUM_TASKS.value}
  try:
    train.evaluate_checkpoint(_WORKDIR.value, _CHECKPOINT.value, _OUT_DIR.value, overrides)
  except train.USER_ERRORS as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
