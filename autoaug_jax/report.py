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
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from autoaug_jax import atomic_files  # noqa: E402
from autoaug_jax.evaluation import MethodSummary  # noqa: E402


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


def plot_deltas(rows: Sequence[MethodSummary], path: str, title: str,
                baseline: str = 'none') -> None:
  """Bar chart of paired accuracy deltas (percentage points) with 95% intervals."""
  rows = [r for r in rows if r.method != baseline]
  fig, ax = plt.subplots(figsize=(1.2 * max(len(rows), 3) + 1, 3.2))
  x = np.arange(len(rows))
  deltas = np.array([100 * r.delta for r in rows])
  err = np.array([[100 * (r.delta - r.delta_lo) for r in rows],
                  [100 * (r.delta_hi - r.delta) for r in rows]])
  colours = ['tab:green' if d > 0 else 'tab:red' for d in deltas]
  ax.bar(x, deltas, yerr=err, capsize=4, color=colours, alpha=0.8)
  ax.axhline(0, color='black', linewidth=0.8)
  ax.set_xticks(x, [r.method for r in rows], rotation=20)
  ax.set_ylabel(f'accuracy delta vs {baseline} (pp)')
  ax.set_title(textwrap.fill(title, 70), fontsize=8)
  fig.tight_layout()
  _save_figure(fig, path, dpi=110)


def _save_figure(fig, path: str, dpi: int) -> None:
  with atomic_files.replacing(path) as tmp:
    fig.savefig(tmp, dpi=dpi, format='png')
  plt.close(fig)


def image_rows(rows: Sequence[np.ndarray], max_images: int = 8,
               cols: int | None = None) -> np.ndarray:
  """Rows of images [n_i, H, W, 3] (floats in [0, 1]) tiled into one uint8 image
  [len(rows) * (H + 2), cols * (W + 2), 3], 2-pixel white gutters; a row with fewer
  than `cols` images (default: the longest row, at most `max_images`) is padded white."""
  h, w = rows[0].shape[1:3]
  cols = cols or min(max_images, max(r.shape[0] for r in rows))
  tiles = []
  for images in rows:
    row = np.ones((cols, h, w, 3), np.float32)
    row[:min(cols, images.shape[0])] = images[:cols]
    tiles.append(row)
  grid = np.ones((len(tiles), cols, h + 2, w + 2, 3), np.float32)
  grid[:, :, 1:-1, 1:-1] = np.stack(tiles)
  grid = grid.transpose(0, 2, 1, 3, 4).reshape(len(tiles) * (h + 2), cols * (w + 2), 3)
  return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)


def augmentation_grid(examples: Mapping[str, tuple[np.ndarray, np.ndarray]],
                      max_images: int = 8) -> np.ndarray:
  """One image: per method a row of originals and a row of their synthetic images.

  Args:
    examples: method -> (originals [n, H, W, 3], synthetic [m, H, W, 3]), floats
      in [0, 1]; synthetic[i] is generated from originals[i % n] (n may differ
      between methods: per-class augmenters show one original per class).
    max_images: columns.

  Returns:
    [rows * (H + 2), cols * (W + 2), 3] uint8 (2-pixel white gutters).
  """
  cols = min(max_images, max(o.shape[0] for o, _ in examples.values()))
  return image_rows([x for pair in examples.values() for x in pair], cols=cols)


def save_rows_figure(rows: Sequence[tuple[str, np.ndarray]], path: str,
                     dpi: int = 110, grid: np.ndarray | None = None) -> None:
  """Labelled rows of images (label, [n, H, W, 3] in [0, 1]) as a PNG (`dpi` 110:
  about 3 pixels per image pixel); `grid`: their tiling, if already made."""
  grid = image_rows([images for _, images in rows]) if grid is None else grid
  fig, ax = plt.subplots(figsize=(grid.shape[1] / 40 + 2.4, grid.shape[0] / 40 + 0.4))
  ax.imshow(grid, interpolation='nearest')
  ax.set_xticks([])
  row_h = grid.shape[0] / len(rows)
  ax.set_yticks([(i + 0.5) * row_h for i in range(len(rows))], [label for label, _ in rows],
                fontsize=7)
  fig.tight_layout()
  _save_figure(fig, path, dpi=dpi)


def save_grid_figure(examples: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str) -> None:
  """`augmentation_grid` with method names, as a PNG."""
  save_rows_figure([(f'{m}\n{part}', x) for m, pair in examples.items()
                    for part, x in zip(('original', 'synthetic'), pair, strict=True)], path,
                   grid=augmentation_grid(examples))


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
  plot_deltas(rows, paths['deltas.png'], f'{header.get("task", "")}, {n} paired test tasks')
  save_grid_figure(examples, paths['augmentations.png'])
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
