"""Two configs' meta-steps timed in one process, their steps alternated (`benchmark --compare`).

On a shared or throttled machine a step's time drifts by 10-30% within minutes
(BUILD_NOTES.md: 7-12 s per 64 px step on this repository's CPU), more than
most changes worth deciding. Two benchmark processes run minutes apart then
compare two hours of the machine, not two programs. Here program A (the
config) and program B (the config with dotted overrides) are compiled side by
side, warmed up, and their steps alternate A B, B A, A B, ... so both see the
same drift. Each pair's time ratio B / A is the unit; their geometric mean
gets a 95% t-interval on the log scale (`statistics.paired_ratio`), and the
verdict only names a winner when that interval excludes 1.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from autoaug_jax import statistics
from autoaug_jax.config import sweeps
from autoaug_jax.core import sharding
from autoaug_jax.errors import ConfigError
from autoaug_jax.run import benchmark
from autoaug_jax.run import setup as setup_lib

# Both programs share one process, hence one set of JAX devices.
_PROCESS_KEYS = ('num_cpu_devices',)


def overridden(config, overrides: Sequence[str]):
  """A copy of `config` with the dotted `overrides` applied (the sweeps' syntax)."""
  if not overrides:
    raise ConfigError('--compare needs at least one dotted override for program B, e.g. '
                      '--compare=classifier.conv_impl=patches.')
  fixed = sorted({sweeps.override_key(o) for o in overrides} & set(_PROCESS_KEYS))
  if fixed:
    raise ConfigError(f'--compare cannot vary {fixed}: both programs run in one process on one '
                      'set of devices. Compare those with two benchmark runs instead.')
  other = copy.deepcopy(config)
  for override in overrides:
    sweeps.apply_override(other, override)
  return other


def _same_data(a, b) -> bool:
  """Whether two configs load the same training split (then B reuses A's placed copy)."""
  return (a.data.to_dict() == b.data.to_dict() and a.image_size == b.image_size
          and a.task.to_dict() == b.task.to_dict())


def compare(config, overrides: Sequence[str], pairs: int = 6, warmup: int = 1) -> dict:
  """Times A (`config`) against B (`config` with `overrides`), steps alternated.

  Args:
    config: program A's config.
    overrides: dotted 'key=value' overrides that make program B.
    pairs: timed steps of each program (one pair = one step of each).
    warmup: untimed steps of each program after its compilation.

  Returns:
    The result dict: each program's step times, median, compile time, XLA
    temporaries and last meta-loss; the per-pair ratios B / A, their geometric
    mean with its 95% interval, and the verdict.
  """
  if pairs < 2:
    raise ConfigError(f'--steps={pairs}: a comparison needs at least 2 pairs (6 or more to '
                      'resolve a 10% difference on a noisy machine).')
  configs = {'a': config, 'b': overridden(config, overrides)}
  runs, programs, states, compile_s, metrics = {}, {}, {}, {}, {}
  # Each side is compiled right after its setup: the setup applies process-wide
  # settings (matmul precision) that tracing reads.
  for name, cfg in configs.items():
    if name == 'b' and _same_data(config, cfg):  # one copy of the dataset, not two
      runs[name] = setup_lib.build(cfg, setup_lib.checked_mesh(cfg, training=True),
                                   runs['a'].splits)
    else:
      runs[name] = setup_lib.prepare(cfg, ('train',), training=True)
    if runs[name].mesh.devices.shape != runs['a'].mesh.devices.shape:
      raise ConfigError(f'the overrides change the device mesh ({runs["a"].mesh.devices.shape} '
                        f'-> {runs[name].mesh.devices.shape}); compare those with two benchmark '
                        'runs.')
    programs[name], states[name], compile_s[name] = benchmark.compile_step(
        runs[name], cfg.meta_batch_size)

  def step(name: str) -> float:
    states[name], metrics[name], seconds = benchmark.timed_step(
        programs[name], states[name], runs[name].splits['train'], runs[name].consts)
    return seconds

  for name in configs:
    for _ in range(warmup):
      step(name)
  times = {'a': [], 'b': []}
  for i in range(pairs):
    for name in ('a', 'b') if i % 2 == 0 else ('b', 'a'):  # ABBA: no side always goes first
      times[name].append(step(name))

  ratio = statistics.paired_ratio(times['a'], times['b'])
  per_program = {}
  for name in configs:
    memory = benchmark.memory_mb(programs[name])
    per_program[name] = {
        'step_times_s': [round(t, 4) for t in times[name]],
        'step_time_median_s': float(np.median(times[name])),
        'compile_s': compile_s[name],
        'xla_temp_mb': memory['temp'] if memory else None,
        'meta_loss': float(metrics[name]['meta_loss']),
        **benchmark.layout(configs[name])}
  peak_mb, peak_kind = benchmark.peak_memory_mb()
  return {
      'b_overrides': list(overrides),
      'pairs': pairs,
      'a': per_program['a'],
      'b': per_program['b'],
      'ratio_b_over_a_per_pair': [round(r, 4) for r in ratio.per_pair],
      'ratio_b_over_a': ratio.geometric_mean,
      'ratio_b_over_a_lo': ratio.lo,
      'ratio_b_over_a_hi': ratio.hi,
      'verdict': ratio.verdict('B', 'A'),
      'peak_memory_mb': peak_mb,
      'peak_memory_kind': f'{peak_kind}, both programs in one process',
      'image_size': config.image_size,
      'devices': sharding.describe(runs['a'].mesh),
      **benchmark.machine(runs['a'].mesh),
  }
