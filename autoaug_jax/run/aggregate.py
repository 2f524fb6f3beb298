"""Sweep aggregate: paired deltas pooled over seeds, the spread across seeds, figures.

Last stage of a sweep (runs -> evaluation reports -> this). Each finished run
leaves `results.json` with the per-task accuracies of every method on the
same test tasks (fixed task seed, independent of the run seed), so for
member m, method a and seed s the per-task deltas d_s[t] = acc_a,s[t] -
acc_none,s[t] are paired. Two things are reported, separately:

- **Task uncertainty**: the deltas averaged over seeds per task, d[t] =
  mean_s d_s[t], and a 95% t-interval of their mean over the T tasks. It
  says whether the method, averaged over augmenter trainings, beats no
  augmentation on this task distribution.
- **Training spread**: the mean delta of each seed, and their standard
  deviation: how much another augmenter-training seed moves the result.
  The paper reported neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from autoaug_jax.run import figures
from autoaug_jax.statistics import t_half_width


@dataclasses.dataclass(frozen=True)
class AggregateRow:
  member: str
  x: str
  panel: str
  method: str
  seeds: int
  num_tasks: int
  mean_acc: float          # over tasks and seeds
  delta: float             # mean paired delta vs 'none'
  delta_lo: float          # 95% t-interval over tasks of the seed-averaged deltas
  delta_hi: float
  significant: bool        # that interval excludes zero
  seed_deltas: tuple[float, ...]  # each seed's mean delta
  seed_sd: float           # their standard deviation (nan for one seed)


def aggregate_member(member: str, x: str, panel: str, results: Sequence[Mapping],
                     baseline: str = 'none') -> list[AggregateRow]:
  """Rows for one member from its seeds' results.json contents (method order kept).

  A method missing from some seeds (e.g. 'adapted' for a frozen augmenter) is
  pooled over the seeds that have it.
  """
  if not results:
    raise ValueError(f'{member}: no results to aggregate.')
  task_sets = {r.get('header', {}).get('test tasks') for r in results}
  if len(task_sets) > 1:
    raise ValueError(f'{member}: seeds were evaluated on different test tasks {task_sets}; '
                     'paired deltas need the same tasks.')
  methods = list(dict.fromkeys(m for r in results for m in r['per_task_accuracy']))
  rows = []
  for method in methods:
    per_seed = [(np.asarray(r['per_task_accuracy'][method], np.float64),
                 np.asarray(r['per_task_accuracy'][baseline], np.float64))
                for r in results if method in r['per_task_accuracy']]
    sizes = {a.size for pair in per_seed for a in pair}
    if len(sizes) != 1:
      raise ValueError(f'{member}/{method}: seeds were evaluated on different numbers of '
                       f'tasks {sorted(sizes)}; paired deltas need the same tasks.')
    deltas = np.stack([a - b for a, b in per_seed])  # [seeds, tasks]
    task_deltas = deltas.mean(0)
    half = t_half_width(task_deltas) if method != baseline else 0.0
    delta = float(task_deltas.mean())
    seed_deltas = tuple(float(d) for d in deltas.mean(1))
    rows.append(AggregateRow(
        member=member, x=x, panel=panel, method=method, seeds=len(per_seed),
        num_tasks=task_deltas.size,
        mean_acc=float(np.mean([a.mean() for a, _ in per_seed])),
        delta=delta, delta_lo=delta - half, delta_hi=delta + half,
        significant=bool(method != baseline and (delta - half > 0 or delta + half < 0)),
        seed_deltas=seed_deltas,
        seed_sd=float(np.std(seed_deltas, ddof=1)) if len(seed_deltas) > 1 else float('nan')))
  return rows


def _where(r: AggregateRow) -> str:
  return f'{r.panel}, {r.x}' if r.panel else r.x


def _delta_cells(r: AggregateRow) -> str:
  """'delta [lo, hi] | yes/no | per-seed deltas (sd)', in percentage points."""
  seeds = ', '.join(f'{100 * d:+.2f}' for d in r.seed_deltas)
  sd = '' if np.isnan(r.seed_sd) else f' ({100 * r.seed_sd:.2f})'
  return (f'{100 * r.delta:+.2f} pp [{100 * r.delta_lo:+.2f}, {100 * r.delta_hi:+.2f}] | '
          f'{"yes" if r.significant else "no"} | {seeds}{sd}')


def markdown_table(rows: Sequence[AggregateRow], x_label: str, baseline: str = 'none') -> str:
  """One line per member and method: accuracy, pooled delta with its interval, seeds."""
  lines = [f'| {x_label or "member"} | method | accuracy | delta vs {baseline} (95% CI over '
           'tasks) | excludes 0 | per-seed deltas (sd) |',
           '|---|---|---|---|---|---|']
  for r in rows:
    cells = '(baseline) |  | ' if r.method == baseline else _delta_cells(r)
    lines.append(f'| {_where(r)} | {r.method} | {100 * r.mean_acc:.2f}% | {cells} |')
  return '\n'.join(lines)


# Paired contrasts besides "vs none": what meta-training changed (the learned
# augmenter against its own initialisation, which is `random_convnet` for the
# ConvNet augmenter) and what test-time adaptation changed.
CONTRASTS = (('learned', 'random_convnet'), ('adapted', 'learned'))


def contrast_rows(member: str, x: str, panel: str, results: Sequence[Mapping]
                  ) -> list[tuple[str, AggregateRow]]:
  """(baseline, row of the method against it) for each of CONTRASTS both evaluated."""
  out = []
  for method, baseline in CONTRASTS:
    if all(baseline in r['per_task_accuracy'] for r in results) and any(
        method in r['per_task_accuracy'] for r in results):
      rows = aggregate_member(member, x, panel, results, baseline=baseline)
      out += [(baseline, r) for r in rows if r.method == method]
  return out


def contrast_table(contrasts: Sequence[tuple[str, AggregateRow]], x_label: str) -> str:
  lines = [f'| {x_label or "member"} | contrast | delta (95% CI over tasks) | excludes 0 | '
           'per-seed deltas (sd) |', '|---|---|---|---|---|']
  lines += [f'| {_where(r)} | {r.method} − {baseline} | {_delta_cells(r)} |'
            for baseline, r in contrasts]
  return '\n'.join(lines)


def grid_rows(member_examples: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
              baseline: str = 'none') -> list[tuple[str, np.ndarray]]:
  """Figure 6 across a sweep, as labelled rows: per member, the support images of its
  first test task, then each augmenter's synthetic images of them; the baselines
  that do not change between members ('fixed', 'random_convnet') for the first
  member only. Input: member -> method -> (originals, synthetic)."""
  shared, skip = ('fixed', 'random_convnet'), (baseline, 'duplicate')  # duplicate = originals
  rows = []
  for i, (member, examples) in enumerate(member_examples.items()):
    shown = [m for m in examples if m not in skip and (m not in shared or i == 0)]
    if not shown:
      continue
    rows.append((f'{member}: original', examples[shown[0]][0]))
    for method in shown:
      originals, synthetic = examples[method]
      if originals.shape[0] != rows[-1][1].shape[0]:  # per-class augmenter (diffusion)
        rows.append((f'{member}: original ({method})', originals))
      rows.append((f'{member}: {method}', synthetic))
  return rows


def write(out_dir: str, rows: Sequence[AggregateRow], member_examples, *, title: str,
          x_label: str, header: Mapping[str, str],
          contrasts: Sequence[tuple[str, AggregateRow]] = ()) -> dict[str, str]:
  """Writes results.md, deltas.png, augmentations.png and aggregate.json; returns paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {n: os.path.join(out_dir, n)
           for n in ('results.md', 'deltas.png', 'augmentations.png', 'aggregate.json')}
  seeds = max((r.seeds for r in rows), default=0)
  tasks = max((r.num_tasks for r in rows), default=0)
  figures.plot_sweep_deltas(rows, paths['deltas.png'],
              f'{title}: {tasks} paired test tasks, {seeds} augmenter seed(s); bars 95% '
              'CI over tasks, x: per-seed means', x_label)
  grid = grid_rows(member_examples)
  if grid:
    # 80 dpi: a sweep's grid has a row per member and method, and is committed
    # with the study's README.
    figures.save_rows_figure(grid, paths['augmentations.png'], dpi=80)
  crossing = [f'{r.panel + ", " if r.panel else ""}{r.x} {r.method}' for r in rows
              if r.method != 'none' and not r.significant]
  lines = [f'# {title}', '']
  lines += [f'- **{k}**: {v}' for k, v in header.items()]
  lines += ['', markdown_table(rows, x_label), '',
            'Deltas are paired per test task (same tasks and classifier initialisations for '
            'every method), averaged over augmenter-training seeds per task; the interval is '
            'a 95% t-interval over tasks. The last column is the spread across seeds, which '
            'the interval does not include.', '',
            ('Intervals that cross zero: ' + '; '.join(crossing) + '.') if crossing
            else 'No interval crosses zero.', '']
  if contrasts:
    lines += ['Paired contrasts between methods (same pooling over seeds): the learned '
              'augmenter against its own initialisation, and test-time adaptation against '
              'the learned augmenter.', '', contrast_table(contrasts, x_label), '']
  lines += [
            '![accuracy deltas](deltas.png)', '']
  if grid:
    lines += ['![augmentations](augmentations.png)', '']
  with open(paths['results.md'], 'w') as f:
    f.write('\n'.join(lines))
  with open(paths['aggregate.json'], 'w') as f:
    json.dump({'header': dict(header), 'rows': [dataclasses.asdict(r) for r in rows],
               'contrasts': [{'baseline': b, **dataclasses.asdict(r)} for b, r in contrasts]},
              f, indent=1)
  if not grid:
    paths.pop('augmentations.png')
  return paths
