"""Per-task results of committed study runs, for the scripts that compare across members.

The studies' own tables come from the sweep runner (`run_sweep.py`); the
scripts beside them (spurious/recovery.py, synthetic_weight/compare.py) ask
questions across members and studies, from the same per-task accuracies.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from autoaug_jax.statistics import t_half_width


def finished_seeds(member_dir: str) -> dict[int, str]:
  """Seed -> run folder, for the member's finished runs (sweep_run.json written last)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(member_dir, 'seed*', 'sweep_run.json'))):
    run = os.path.dirname(path)
    if os.path.isfile(os.path.join(run, 'results.json')):
      out[int(os.path.basename(run)[len('seed'):])] = run
  return out


def per_task(member_dir: str, seeds: list[int] | None = None
             ) -> tuple[dict[str, np.ndarray], list[int]]:
  """Method -> [tasks] accuracy averaged over the member's finished seeds (or `seeds`),
  as results.md pools them; and the seeds used."""
  runs = finished_seeds(member_dir)
  use = sorted(runs if seeds is None else set(seeds) & set(runs))
  results = []
  for seed in use:
    with open(os.path.join(runs[seed], 'results.json')) as f:
      results.append(json.load(f)['per_task_accuracy'])
  if not results:
    return {}, []
  return {m: np.mean([np.asarray(r[m]) for r in results], axis=0) for m in results[0]}, use


def t_interval(x: np.ndarray) -> tuple[float, float, float]:
  """Mean and 95% t-interval over tasks."""
  half = t_half_width(x)
  return x.mean(), x.mean() - half, x.mean() + half


def pp(mid_lo_hi) -> str:
  mid, lo, hi = (100 * v for v in mid_lo_hi)
  return f'{mid:+.2f} pp [{lo:+.2f}, {hi:+.2f}]'


def cli(main, here: str, out_name: str) -> None:
  """A comparison script's command line: `[--root=ROOT]` (default: experiments/), then
  main(root)'s markdown written to here/out_name and printed."""
  import sys
  args = [a for a in sys.argv[1:] if a.startswith('--root=')]
  result = main(args[0].split('=', 1)[1] if args else os.path.dirname(here))
  with open(os.path.join(here, out_name), 'w') as f:
    f.write(result)
  print(result)
