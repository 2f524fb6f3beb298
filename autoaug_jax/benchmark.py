r"""Benchmark of the compiled meta-step: compile time, throughput, memory, FLOPs.

  python -m autoaug_jax.benchmark --config=configs/default.py \
      [--config.image_size=128 --config.inner.remat=False ...] [--steps=5 --warmup=2]

Measures, on the config's task shape and devices:
- compile_s: lowering + XLA compilation of the meta-step;
- meta_steps_per_s / tasks_per_s: from the median of `--steps` timed steps
  after `--warmup` steps, each ended with `block_until_ready`;
- peak_memory_mb: the accelerator's peak bytes in use where the backend
  reports it, else the process's peak resident memory (CPU; includes the
  compiler and the dataset, so an upper bound); xla_temp_mb: XLA's own
  estimate of the step's temporary buffers;
- flops_per_meta_step: XLA's cost analysis. XLA counts a scan body once, so
  the step is also compiled with the inner loop fully unrolled at I = 2 and
  I = 3 inner steps and extrapolated linearly to the configured I (the
  program is affine in I from I = 2 on, to 1e-4; at I = 1 XLA drops the
  remat of the lone step); achieved_gflops = flops x meta_steps_per_s.
The last line printed is one JSON object with all of these.

With --data_only it measures the dataset instead (no meta-step): seconds to
load the three class splits, host peak RSS, and the bytes the uint8 splits
take on each device (plus the device's own bytes_in_use where reported), and
the resident memory once the host copies are dropped, as training drops them:

  python -m autoaug_jax.benchmark --config=configs/paper.py --data_only

With --abstract (diffusion augmenter only) nothing runs: the meta-step is
compiled for abstract inputs, SD-1.5's and ViT-B/32's shapes with no weights
and no data, and XLA's memory analysis of that program is reported (argument,
output, temporary bytes and their sum): the full-size memory estimate on a
machine without the checkpoint or the accelerator. On CPU it is the CPU
compiler's buffer assignment, so an estimate of what an accelerator needs:

  python -m autoaug_jax.benchmark --config=configs/diffusion.py --abstract

With --compare, two programs are timed in one process, their steps
alternated (A B, B A, ...): A is the config, B the config with the dotted
overrides given (repeat the flag for several). `--steps` is then the number
of pairs. It reports both programs' step times and the per-pair ratios B / A
with their geometric mean and 95% interval, and names a winner only when that
interval excludes 1 (`run/compare.py` says why: this machine drifts by more
than most changes worth deciding):

  python -m autoaug_jax.benchmark --config=configs/default.py \
      --config.image_size=64 --compare=classifier.conv_impl=patches --steps=8

On several hosts (the cluster flags of `cluster_flags`) every process runs
the same measurement over the global mesh and process 0 prints it.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from autoaug_jax import cluster_flags
from autoaug_jax.run import benchmark, cluster, compare

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed meta-steps (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed meta-steps after compilation.')
_FLOPS = flags.DEFINE_boolean('flops', True, 'Count FLOPs (two extra small compiles).')
_DATA_ONLY = flags.DEFINE_boolean('data_only', False,
                                  'Measure loading and placing the dataset only.')
_ABSTRACT = flags.DEFINE_boolean('abstract', False,
                                 'Compile only, for abstract SD-1.5 inputs, and report XLA\'s '
                                 'memory analysis (augmenter.name=diffusion).')
_COMPARE = flags.DEFINE_multi_string(
    'compare', None, 'Dotted override(s) making program B, timed against the config (A) with '
    'their steps alternated; --steps is then the number of pairs.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _COMPARE.value and (_DATA_ONLY.value or _ABSTRACT.value):
    raise app.UsageError('--compare times two meta-steps; it does not combine with --data_only '
                         'or --abstract.')

  def measure():
    if _COMPARE.value:
      return compare.compare(_CONFIG.value, _COMPARE.value, _STEPS.value, _WARMUP.value)
    if _DATA_ONLY.value:
      return benchmark.data_benchmark(_CONFIG.value)
    if _ABSTRACT.value:
      return benchmark.abstract_memory(_CONFIG.value)
    return benchmark.benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value, _FLOPS.value)

  result = cluster_flags.run(measure)
  if not cluster.is_primary():  # every process measures; one reports
    return
  for key, value in result.items():
    print(f'{key:>22}: {value}')
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
