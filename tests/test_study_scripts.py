"""The scripts that compare committed study runs across members and studies."""

import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO


def _script(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_recovery_reproduces_its_committed_table():
  recovery = _script(REPO / 'experiments' / 'spurious' / 'recovery.py')
  text = recovery.main(str(REPO / 'experiments'))
  assert text == (REPO / 'experiments' / 'spurious' / 'recovery.md').read_text()


def _run(root, study, member, seed, accuracies, weight=None):
  run = root / study / member / f'seed{seed}'
  run.mkdir(parents=True)
  (run / 'results.json').write_text(json.dumps({'per_task_accuracy': accuracies}))
  lines = [{'step': 1, 'train/synthetic_weight': 0.5}, {'step': 2, 'perf/x': 1.0}]
  if weight is not None:
    lines.insert(1, {'step': 2, 'train/synthetic_weight': weight})
  (run / 'metrics.jsonl').write_text('\n'.join(json.dumps(x) for x in lines))
  (run / 'sweep_run.json').write_text('{}')


def test_compare_pairs_the_weighted_runs_with_the_plain_ones_seed_by_seed(tmp_path):
  compare = _script(REPO / 'experiments' / 'synthetic_weight' / 'compare.py')
  none = [0.4, 0.6, 0.8, 0.2]
  # Seed 0 in both studies, seed 1 only in the weighted one: only seed 0 is paired.
  _run(tmp_path, 'spurious', 's10', 0, {'none': none, 'learned': [0.4, 0.6, 0.8, 0.4]})
  _run(tmp_path, 'synthetic_weight', 's10', 0,
       {'none': none, 'learned': [0.6, 0.6, 0.8, 0.4]}, weight=0.9)
  _run(tmp_path, 'synthetic_weight', 's10', 1, {'none': none, 'learned': [0.0] * 4}, weight=0.1)
  text = compare.main(str(tmp_path))
  rows = [line for line in text.splitlines() if line.startswith('| own')]
  assert len(rows) == 1
  cells = [c.strip() for c in rows[0].split('|')[1:-1]]
  assert cells[1:4] == ['1.0', '1', '0.900']
  # learned + weight − none: deltas (0.2, 0, 0, 0.2), mean +10 pp; against plain: (0.2, 0, 0, 0).
  assert cells[4].startswith('+10.00 pp [') and cells[5].startswith('+5.00 pp [')
  _run(tmp_path, 'spurious', 's0', 0, {'none': none, 'learned': none})
  _run(tmp_path, 'synthetic_weight', 's0', 0, {'none': list(np.roll(none, 1)), 'learned': none})
  with pytest.raises(SystemExit, match='not evaluated on the same tasks'):
    compare.main(str(tmp_path))
