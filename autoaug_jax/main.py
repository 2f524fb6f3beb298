"""Entry point: meta-train an augmenter and write the evaluation report.

  python -m autoaug_jax.main --config=configs/default.py --workdir=runs/default \
      [--config.task.k_shot=1 --config.augmenter.factor=2 ...]

Several hosts: the same command on each, plus --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or --multihost (see `cluster_flags`).

Flags only; `run.train.train_and_evaluate` does the work. Running it again on the
same workdir resumes from the latest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

from autoaug_jax import cluster_flags
from autoaug_jax.run import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file; override fields with --config.KEY=VALUE.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (created; resumed if it exists).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cluster_flags.run(lambda: train.train_and_evaluate(_CONFIG.value, _WORKDIR.value))


if __name__ == '__main__':
  app.run(main)
