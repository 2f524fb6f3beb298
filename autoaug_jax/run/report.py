"""Report: results table, accuracy-delta plot with confidence intervals, augmentation grid.

Last stage of the data flow (evaluation -> report). Turns `MethodSummary`
rows into `report.md`, `deltas.png` (the paper's Figures 2-5 form: accuracy
delta against no augmentation, here with 95% intervals from paired per-task
deltas), `augmentations.png` (Figure 6: originals above, synthetic images
below, per method) and `results.json` (everything, per-task accuracies
included, for sweep aggregation).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

from autoaug_jax.run import atomic_files, figures
from autoaug_jax.statistics import MethodSummary


def markdown_table(rows: Sequence[MethodSummary], baseline: str = 'none') -> str:
  """The results table; a 'diverged tasks' column appears when any classifier diverged."""
  diverged = any(r.diverged for r in rows)
  lines = [
      f'| method | accuracy (95% CI) | delta vs {baseline} (95% CI) | significant |'
      + (' diverged tasks |' if diverged else ''),
      '|---|---|---|---|' + ('---|' if diverged else ''),
  ]
  for r in rows:
    if r.method == baseline:
      delta, sig = '(baseline)', ''
    else:
      delta = (f'{100 * r.delta:+.2f} pp [{100 * r.delta_lo:+.2f}, {100 * r.delta_hi:+.2f}]')
      sig = 'yes' if r.significant else 'no'
    lines.append(f'| {r.method} | {100 * r.mean_acc:.2f}% ± {100 * r.acc_ci:.2f} | {delta} '
                 f'| {sig} |' + (f' {r.diverged} |' if diverged else ''))
  return '\n'.join(lines)


def save_examples(examples: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str) -> None:
  """The grid's images as uint8 arrays ('METHOD/originals', 'METHOD/synthetic'), so
  that sweep aggregates can lay out one grid across runs (`load_examples`)."""
  arrays = {f'{m}/{part}': (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
            for m, pair in examples.items()
            for part, x in zip(('originals', 'synthetic'), pair, strict=True)}
  with atomic_files.replacing(path, suffix='.npz') as tmp:  # numpy appends .npz otherwise
    np.savez_compressed(tmp, **arrays)


def load_examples(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Inverse of `save_examples`: method -> (originals, synthetic), floats in [0, 1]."""
  with np.load(path) as f:
    methods = dict.fromkeys(k.split('/')[0] for k in f.files)
    return {m: (f[f'{m}/originals'] / 255.0, f[f'{m}/synthetic'] / 255.0) for m in methods}


def write_report(out_dir: str, rows: Sequence[MethodSummary],
                 accuracies: Mapping[str, np.ndarray], examples, *, header: Mapping[str, str],
                 config_json: str, diverged: Mapping[str, Sequence[int]] | None = None
                 ) -> dict[str, str]:
  """Writes report.md, deltas.png, augmentations.png, examples.npz and, last, results.json;
  returns their paths.

  Each file is written atomically, and results.json (the file sweeps read)
  last, so a run killed while reporting leaves no half-written file and no
  results.json that disagrees with the others. `diverged`: method -> indices
  of the tasks whose classifier diverged (scored 0).
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, name)
           for name in ('report.md', 'deltas.png', 'augmentations.png', 'results.json',
                        'examples.npz')}
  n = rows[0].num_tasks if rows else 0
  figures.plot_deltas(rows, paths['deltas.png'], f'{header.get("task", "")}, {n} paired test tasks')
  figures.save_grid_figure(examples, paths['augmentations.png'])
  significant = [r.method for r in rows if r.significant]
  failed = [f'{r.method} {r.diverged} of {r.num_tasks}' for r in rows if r.diverged]
  lines = ['# autoaug-jax evaluation report', '']
  lines += [f'- **{k}**: {v}' for k, v in header.items()]
  lines += [
      '', '## Results', '',
      f'Query accuracy on {n} test tasks from the meta-test classes; every method sees the '
      'same tasks and the same classifier initialisations, so deltas are paired. Intervals '
      'are 95% t-intervals over tasks.', '',
      markdown_table(rows), '',
      ('Deltas whose interval excludes zero: ' + ', '.join(significant) + '.') if significant
      else 'No delta has an interval that excludes zero.', '',
      *([f'**Diverged**: the classifier\'s query loss was non-finite on some tasks, which '
         f'score 0: {", ".join(failed)}.', ''] if failed else []),
      '![accuracy deltas](deltas.png)', '',
      '## Augmentations (one test task; originals above, synthetic below)', '',
      '![augmentations](augmentations.png)', '',
      '## Config', '', '```json', config_json, '```', '',
  ]
  atomic_files.write_text(paths['report.md'], '\n'.join(lines))
  save_examples(examples, paths['examples.npz'])
  results = {'header': dict(header),
             'summary': [dataclasses.asdict(r) for r in rows],
             'per_task_accuracy': {m: np.asarray(a).tolist() for m, a in accuracies.items()}}
  if diverged and any(len(v) for v in diverged.values()):
    results['per_task_diverged'] = {m: [int(i) for i in v] for m, v in diverged.items()}
  atomic_files.write_json(paths['results.json'], results, indent=1)
  return paths
