"""Figures of reports and sweep aggregates: every plot the project draws.

It selects the file-only backend (no display on training machines) before
pyplot is imported. Imported by the report writers only, so that the core
and the task sampler never pull matplotlib in. (The glyph dataset uses
matplotlib's font rasteriser, not pyplot, and is imported on use.)
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from autoaug_jax.run import atomic_files  # noqa: E402
from autoaug_jax.statistics import MethodSummary  # noqa: E402


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


def plot_sweep_deltas(rows: Sequence, path: str, title: str, x_label: str,
                      baseline: str = 'none') -> None:
  """A sweep's `aggregate.AggregateRow`s in the paper's figure form: delta vs `baseline`
  per method (colour) and sweep value (x), one panel per `panel`. Bars: 95% intervals
  over tasks; dots: each seed's mean."""
  rows = [r for r in rows if r.method != baseline]
  panels = list(dict.fromkeys(r.panel for r in rows))
  methods = list(dict.fromkeys(r.method for r in rows))
  colours = {m: plt.get_cmap('tab10')(i % 10) for i, m in enumerate(methods)}
  width = 0.8 / max(len(methods), 1)
  xs_per_panel = [list(dict.fromkeys(r.x for r in rows if r.panel == p)) for p in panels]
  fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True,
                           figsize=(max(3.0, 0.45 * len(methods) * max(map(len, xs_per_panel)))
                                    * len(panels) + 1.5, 3.6))
  for ax, panel, xs in zip(axes[0], panels, xs_per_panel, strict=True):
    for i, method in enumerate(methods):
      picked = {r.x: r for r in rows if r.panel == panel and r.method == method}
      pos = np.array([j + (i - (len(methods) - 1) / 2) * width
                      for j, x in enumerate(xs) if x in picked])
      if not pos.size:
        continue
      sel = [picked[x] for x in xs if x in picked]
      delta = np.array([100 * r.delta for r in sel])
      err = np.array([[100 * (r.delta - r.delta_lo) for r in sel],
                      [100 * (r.delta_hi - r.delta) for r in sel]])
      ax.errorbar(pos, delta, yerr=err, fmt='o', color=colours[method], capsize=3,
                  markersize=5, label=method if ax is axes[0][0] else None)
      for p, r in zip(pos, sel, strict=True):
        if len(r.seed_deltas) > 1:
          ax.scatter(np.full(len(r.seed_deltas), p + width * 0.3),
                     100 * np.asarray(r.seed_deltas), s=9, marker='x', color=colours[method],
                     alpha=0.7, linewidths=0.8)
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(x_label)
    if panel:
      ax.set_title(panel, fontsize=9)
  axes[0][0].set_ylabel(f'accuracy delta vs {baseline} (pp)')
  wrapped = textwrap.fill(title, int(fig.get_figwidth() * 13))
  fig.suptitle(wrapped, fontsize=8)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='center right', fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0, 0.86, 1 - 0.05 * (wrapped.count('\n') + 1)))
  fig.savefig(path, dpi=110)
  plt.close(fig)
