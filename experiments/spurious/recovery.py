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

import glob
import json
import os
import sys

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ('duplicate', 'fixed', 'random_convnet', 'learned')


def _per_task(member_dir: str) -> tuple[dict[str, np.ndarray], int]:
  """Method -> [tasks] accuracy averaged over the member's finished seeds."""
  runs = []
  for path in sorted(glob.glob(os.path.join(member_dir, 'seed*', 'results.json'))):
    if os.path.isfile(os.path.join(os.path.dirname(path), 'sweep_run.json')):
      with open(path) as f:
        runs.append(json.load(f)['per_task_accuracy'])
  if not runs:
    return {}, 0
  return {m: np.mean([np.asarray(r[m]) for r in runs], axis=0) for m in runs[0]}, len(runs)


def _t_interval(x: np.ndarray) -> tuple[float, float, float]:
  half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
  return x.mean(), x.mean() - half, x.mean() + half


def _ratio_interval(num: np.ndarray, den: np.ndarray, seed: int = 0) -> tuple[float, float]:
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(num), (10_000, len(num)))
  ratios = num[idx].mean(axis=1) / den[idx].mean(axis=1)
  return tuple(np.percentile(ratios, [2.5, 97.5]))


def _pp(lo_mid_hi) -> str:
  mid, lo, hi = (100 * v for v in lo_mid_hi)
  return f'{mid:+.2f} pp [{lo:+.2f}, {hi:+.2f}]'


def main(root: str) -> str:
  study = os.path.join(root, 'spurious')
  clean, clean_seeds = _per_task(os.path.join(study, 's0'))
  if not clean:
    sys.exit(f'No finished s0 run under {study}; run the sweep first.')
  lines = ['| strength | seeds | cost: none(0) − none(s) | method | m(s) − none(s) | '
           'share of the cost recovered (95% bootstrap) | m(s) − none(0) |',
           '|---|---|---|---|---|---|---|']
  for member, strength in (('s05', '0.5'), ('s10', '1.0')):
    colored, seeds = _per_task(os.path.join(study, member))
    if not colored:
      continue
    cost = clean['none'] - colored['none']
    for m in METHODS:
      gain = colored[m] - colored['none']
      lo, hi = _ratio_interval(gain, cost)
      lines.append(f'| {strength} | {seeds} | {_pp(_t_interval(cost))} | {m} | '
                   f'{_pp(_t_interval(gain))} | {gain.mean() / cost.mean():+.0%} '
                   f'[{lo:+.0%}, {hi:+.0%}] | {_pp(_t_interval(colored[m] - clean["none"]))} |')
  text = (f'Spurious colour: its cost and the share each method recovers (s0 from {clean_seeds} '
          'seeds; `python experiments/spurious/recovery.py`).\n\n' + '\n'.join(lines) + '\n')
  with open(os.path.join(HERE, 'recovery.md'), 'w') as f:
    f.write(text)
  return text


if __name__ == '__main__':
  args = [a for a in sys.argv[1:] if a.startswith('--root=')]
  print(main(args[0].split('=', 1)[1] if args else os.path.dirname(HERE)))
