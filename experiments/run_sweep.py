r"""Runs one study of the paper (a folder of experiments/) as a resumable sweep.

  python experiments/run_sweep.py --sweep=support_size --base=configs/sweep_cpu.py \
      --root=runs/sweeps --seeds=2

One workdir per member and seed (ROOT/<study>/<member>/seed<s>); rerunning the
same command skips finished runs and resumes an interrupted one from its
checkpoints; at the end ROOT/<study>/results.md, deltas.png and
augmentations.png aggregate every run. On several hosts add the cluster flags
of `autoaug_jax.cluster_flags` (process 0 writes the sweep's files). Flags
only; `autoaug_jax.run.sweep` does the work.
"""

from absl import app, flags

from autoaug_jax import cluster_flags
from autoaug_jax.run import sweep

_SWEEP = flags.DEFINE_string('sweep', None, 'A study folder of experiments/ (e.g. '
                             'support_size) or a path to a sweep.json.')
_BASE = flags.DEFINE_string('base', 'configs/sweep_cpu.py',
                            'Base config file the sweep overrides (FILE or FILE:ARG).')
_ROOT = flags.DEFINE_string('root', None, 'Directory for the runs and the aggregate.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Augmenter-training seeds per member (0..N-1).')
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'Dotted config override applied to every member first, e.g. '
    '--override=augmenter.weights=~/models/resnet-50 (repeatable).')
_MEMBERS = flags.DEFINE_list('members', [], 'Only these members of the sweep (default: all).')
_AGGREGATE_ONLY = flags.DEFINE_bool('aggregate_only', False,
                                    'Run nothing; aggregate the finished runs.')
flags.mark_flags_as_required(['sweep', 'root'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cluster_flags.run(lambda: sweep.run_sweep(
      _SWEEP.value, _BASE.value, _ROOT.value, _SEEDS.value, tuple(_OVERRIDE.value),
      aggregate_only=_AGGREGATE_ONLY.value, members=tuple(_MEMBERS.value)))


if __name__ == '__main__':
  app.run(main)
