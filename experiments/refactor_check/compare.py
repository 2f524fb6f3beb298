"""Compares two `fingerprint.sh` outputs: every number of every run, bit for bit.

  python experiments/refactor_check/compare.py OLD_OUT NEW_OUT

Prints one line per file and exits 1 if any differs. Timings (perf/ metrics,
*_per_s, *_s, achieved_gflops) are left out; everything else must be equal.
"""

import glob
import json
import os
import sys

TIMING = ('perf/', 'time', 'per_s', 'compile_s', 'gflops', 'rss', 'load_s', 'peak_memory')


def _clean(record: dict) -> dict:
  return {k: v for k, v in sorted(record.items()) if not any(t in k for t in TIMING)}


def _metrics(path: str) -> list:
  with open(path) as f:
    return [_clean(json.loads(line)) for line in f]


def _results(path: str) -> dict:
  with open(path) as f:
    r = json.load(f)
  return {'summary': r['summary'], 'per_task_accuracy': r['per_task_accuracy'],
          'header': {k: v for k, v in r['header'].items() if k != 'devices'}}


def _benchmark(path: str) -> dict:
  with open(path) as f:
    last = [line for line in f if line.startswith('{')][-1]
  return _clean(json.loads(last))


def main(old: str, new: str) -> int:
  checks = []
  for run in ('A', 'D', 'E', 'F'):
    checks.append((f'{run} metrics.jsonl', _metrics, f'w/{run}/metrics.jsonl'))
    checks.append((f'{run} results.json', _results, f'w/{run}/results.json'))
  checks.append(('B results.json', _results, 'w/A/eval_*/results.json'))
  checks += [('C benchmark', _benchmark, 'C.log'), ('G data benchmark', _benchmark, 'G.log')]
  failed = 0
  for name, read, pattern in checks:
    paths = [sorted(glob.glob(os.path.join(root, pattern))) for root in (old, new)]
    if not all(paths):
      print(f'{name}: MISSING in {"old" if not paths[0] else "new"}')
      failed += 1
      continue
    same = read(paths[0][0]) == read(paths[1][0])
    print(f'{name}: {"identical" if same else "DIFFERS"}')
    failed += not same
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(*sys.argv[1:]))
