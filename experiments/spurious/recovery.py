r"""How much of the spurious colour's cost each method recovers, from the committed runs.

  python experiments/spurious/recovery.py [--root=experiments]

The colour's cost at strength s is none(0) - none(s); a method m recovers
(m(s) - none(s)) / (none(0) - none(s)) of it. Every member is evaluated on
the same 100 test tasks with the same classifier initialisations (only the
support images' colour differs), so both are paired per task; each run's
per-task accuracies are averaged over the seeds a member has, as in
results.md. Intervals: 95% t-intervals over tasks for the differences, a
paired bootstrap over tasks (10,000 resamples) for the ratio. Writes
recovery.md next to this file and prints it.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # experiments/, for study_results
from study_results import cli, per_task, pp, t_interval  # noqa: E402

METHODS = ('duplicate', 'fixed', 'random_convnet', 'learned')


def _ratio_interval(num: np.ndarray, den: np.ndarray, seed: int = 0) -> tuple[float, float]:
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(num), (10_000, len(num)))
  ratios = num[idx].mean(axis=1) / den[idx].mean(axis=1)
  return tuple(np.percentile(ratios, [2.5, 97.5]))


def main(root: str) -> str:
  study = os.path.join(root, 'spurious')
  clean, clean_seeds = per_task(os.path.join(study, 's0'))
  if not clean:
    sys.exit(f'No finished s0 run under {study}; run the sweep first.')
  lines = ['| strength | seeds | cost: none(0) − none(s) | method | m(s) − none(s) | '
           'share of the cost recovered (95% bootstrap) | m(s) − none(0) |',
           '|---|---|---|---|---|---|---|']
  for member, strength in (('s05', '0.5'), ('s10', '1.0')):
    colored, seeds = per_task(os.path.join(study, member))
    if not colored:
      continue
    cost = clean['none'] - colored['none']
    for m in METHODS:
      gain = colored[m] - colored['none']
      lo, hi = _ratio_interval(gain, cost)
      lines.append(f'| {strength} | {len(seeds)} | {pp(t_interval(cost))} | {m} | '
                   f'{pp(t_interval(gain))} | {gain.mean() / cost.mean():+.0%} '
                   f'[{lo:+.0%}, {hi:+.0%}] | {pp(t_interval(colored[m] - clean["none"]))} |')
  text = (f'Spurious colour: its cost and the share each method recovers (s0 from '
          f'{len(clean_seeds)} seeds; `python experiments/spurious/recovery.py`).\n\n'
          + '\n'.join(lines) + '\n')
  return text


if __name__ == '__main__':
  cli(main, HERE, 'recovery.md')
