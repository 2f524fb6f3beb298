"""Paired statistics: per-task accuracies (means, deltas and 95% t-intervals), and
paired step-time ratios.

A leaf module (NumPy and SciPy only), shared by the evaluation report, the
sweep aggregate and the benchmark's interleaved comparison. Every method is
scored on the same tasks with the same classifier initialisations, so the
per-task differences against the baseline are paired and their mean gets a
t-interval (Section 5.5 of the paper reports large task-to-task variance;
pairing removes it from the deltas). Likewise two programs' steps timed
alternately are paired, and their ratios carry the comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import scipy.stats


@dataclasses.dataclass(frozen=True)
class MethodSummary:
  method: str
  num_tasks: int
  mean_acc: float
  acc_ci: float            # half-width of the 95% t-interval of the mean accuracy
  delta: float             # mean paired (method - baseline) accuracy
  delta_lo: float          # 95% t-interval of the mean delta
  delta_hi: float
  significant: bool        # the delta interval excludes zero
  diverged: int = 0        # tasks whose classifier diverged (scored 0)


def t_half_width(values: np.ndarray) -> float:
  n = values.size
  if n < 2:
    return float('nan')
  return float(scipy.stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


def summarize(accuracies: Mapping[str, np.ndarray], baseline: str = 'none',
              diverged: Mapping[str, int] | None = None) -> list[MethodSummary]:
  """Mean accuracy and paired delta against `baseline`, with 95% t-intervals.

  Args:
    accuracies: method -> per-task accuracies [T], all on the same T tasks.
    baseline: the method deltas are taken against.
    diverged: method -> number of tasks whose classifier diverged (reported).
  """
  if baseline not in accuracies:
    raise ValueError(f'The baseline {baseline!r} was not evaluated; add it to eval.methods.')
  base = np.asarray(accuracies[baseline], np.float64)
  rows = []
  for method, acc in accuracies.items():
    acc = np.asarray(acc, np.float64)
    if acc.shape != base.shape:
      raise ValueError(f'{method}: {acc.shape} accuracies vs {base.shape} for {baseline}; '
                       'paired deltas need the same tasks.')
    diff = acc - base
    half = t_half_width(diff) if method != baseline else 0.0
    delta = float(diff.mean())
    rows.append(MethodSummary(
        method=method, num_tasks=acc.size, mean_acc=float(acc.mean()),
        acc_ci=t_half_width(acc), delta=delta, delta_lo=delta - half, delta_hi=delta + half,
        significant=bool(method != baseline and (delta - half > 0 or delta + half < 0)),
        diverged=int((diverged or {}).get(method, 0))))
  return rows


@dataclasses.dataclass(frozen=True)
class RatioSummary:
  """Paired ratios b / a (e.g. step times of two programs, measured alternately)."""
  per_pair: tuple[float, ...]
  geometric_mean: float
  lo: float                # 95% t-interval of the geometric mean (on log ratios)
  hi: float

  def verdict(self, b: str, a: str) -> str:
    """Which side is faster, when the interval excludes 1; else that none is resolved."""
    span = f'{b} / {a} step time {self.geometric_mean:.3f} [{self.lo:.3f}, {self.hi:.3f}]'
    if self.hi < 1:
      return f'{b} faster: {span}'
    if self.lo > 1:
      return f'{b} slower: {span}'
    return f'no difference resolved: {span} includes 1'


def paired_ratio(a, b) -> RatioSummary:
  """Geometric mean of the paired ratios b[i] / a[i] with a 95% t-interval.

  Times are positive and their noise multiplicative (a slower hour scales both
  sides), so the interval is taken on log ratios and mapped back.

  Args:
    a, b: [P] positive values, paired by index.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size < 2:
    raise ValueError(f'paired ratios need two 1-D arrays of one length >= 2; got {a.shape} '
                     f'and {b.shape}.')
  if not (np.all(a > 0) and np.all(b > 0)):
    raise ValueError('paired ratios need positive values.')
  logs = np.log(b) - np.log(a)
  mean, half = float(logs.mean()), t_half_width(logs)
  return RatioSummary(per_pair=tuple(float(r) for r in np.exp(logs)),
                      geometric_mean=float(np.exp(mean)), lo=float(np.exp(mean - half)),
                      hi=float(np.exp(mean + half)))
