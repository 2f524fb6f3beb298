r"""Does the learned synthetic weight keep the learned augmenter's gains and refuse its harm?

  python experiments/synthetic_weight/compare.py [--root=experiments]

For each design of the weight (this study: the logit on its own optimiser;
synthetic_weight_shared: on the augmenter's) and each spurious strength, from
the committed runs: learned + weight against `none` (is it ever significantly
worse?) and against the learned augmenter without the weight, the same
member of the spurious study at the same seeds (does it keep the gain?).
Every run is evaluated on the same 100 test tasks with the same classifier
initialisations, so both differences are paired per task; per-task
accuracies are averaged over the seeds both runs have. Intervals: 95%
t-intervals over tasks. Also the weight each seed ended with. Writes
comparison.md next to this file and prints it.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # experiments/, for study_results
from study_results import cli, finished_seeds, per_task, pp, t_interval  # noqa: E402

DESIGNS = (('synthetic_weight', 'own optimiser (lr 0.02)'),
           ('synthetic_weight_shared', "augmenter's optimiser (Adam 1e-3)"))
MEMBERS = (('s0', '0'), ('s10', '1.0'))


def final_weight(run_dir: str) -> float:
  """The learned weight at the run's last logged meta-step."""
  weight = float('nan')
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    for line in f:
      weight = json.loads(line).get('train/synthetic_weight', weight)
  return weight


def main(root: str) -> str:
  lines = ['| weight\'s logit on | spurious | seeds | final weight per seed | '
           'learned + weight − none | learned + weight − learned (no weight) |',
           '|---|---|---|---|---|---|']
  for study, design in DESIGNS:
    for member, strength in MEMBERS:
      weighted_runs = finished_seeds(os.path.join(root, study, member))
      plain_dir = os.path.join(root, 'spurious', member)
      seeds = sorted(set(weighted_runs) & set(finished_seeds(plain_dir)))
      if not seeds:
        continue
      weighted, _ = per_task(os.path.join(root, study, member), seeds)
      plain, _ = per_task(plain_dir, seeds)
      if not np.array_equal(weighted['none'], plain['none']):
        sys.exit(f'{study}/{member} and spurious/{member} were not evaluated on the same '
                 'tasks (their `none` accuracies differ); they cannot be paired.')
      weights = ', '.join(f'{final_weight(weighted_runs[s]):.3f}' for s in seeds)
      lines.append(f'| {design} | {strength} | {len(seeds)} | {weights} | '
                   f'{pp(t_interval(weighted["learned"] - weighted["none"]))} | '
                   f'{pp(t_interval(weighted["learned"] - plain["learned"]))} |')
  text = ('The learned synthetic weight against no augmentation and against the learned '
          'augmenter without it (`python experiments/synthetic_weight/compare.py`).\n\n'
          + '\n'.join(lines) + '\n')
  return text


if __name__ == '__main__':
  cli(main, HERE, 'comparison.md')
