"""The package's layers: one-way imports, no cycles, config read in one place, lazy registries.

Reads the source (every import, deferred ones inside functions included), so
it fails on the import that breaks a rule, before any behaviour does.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'autoaug_jax'
ENTRY_POINTS = {'autoaug_jax.main', 'autoaug_jax.evaluate', 'autoaug_jax.benchmark',
                'autoaug_jax.data.prepare', 'autoaug_jax.cluster_flags'}
# Top to bottom; a module may import its own layer and the ones below it.
LAYERS = [
    ('entry points', lambda m: m in ENTRY_POINTS),
    ('orchestrators', lambda m: m.startswith('autoaug_jax.run')),
    ('config', lambda m: m.startswith('autoaug_jax.config')),
    ('core', lambda m: m.startswith('autoaug_jax.core')),
    ('model families', lambda m: m.startswith(('autoaug_jax.augmenters',
                                               'autoaug_jax.classifiers'))),
    ('model loading', lambda m: m.startswith('autoaug_jax.pretrained')
     or m == 'autoaug_jax.layers'),
    ('data', lambda m: m.startswith('autoaug_jax.data')),
    ('leaves', lambda m: m in ('autoaug_jax.errors', 'autoaug_jax.statistics',
                               'autoaug_jax.types')),
]


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    out[name] = path
  return out


MODULES = _modules()


def _imports(path: pathlib.Path) -> set[str]:
  """Every package module `path` imports, at any depth of the file (deferred too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import mod` imports pkg.mod when that is a module.
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in MODULES
               else node.module for a in node.names]
    else:
      continue
    found.update(n for n in names if n.startswith('autoaug_jax') and n in MODULES)
  return found


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _layer(module: str) -> int:
  for i, (_, member) in enumerate(LAYERS):
    if member(module):
      return i
  return -1


def test_every_module_has_a_layer():
  assert [m for m in MODULES if m != 'autoaug_jax' and _layer(m) < 0] == []
  assert GRAPH['autoaug_jax'] == set()  # the package itself imports nothing


def test_imports_only_go_down():
  upward = [f'{m} ({LAYERS[_layer(m)][0]}) imports {i} ({LAYERS[_layer(i)][0]})'
            for m, imports in GRAPH.items() if m != 'autoaug_jax'
            for i in imports if _layer(i) < _layer(m)]
  assert upward == []


def test_no_import_cycles_counting_deferred_imports():
  cycles, state = [], {}

  def visit(m, stack):
    state[m] = 'open'
    for i in sorted(GRAPH[m]):
      if state.get(i) == 'open':
        cycles.append(' -> '.join(stack[stack.index(i):] + [i]))
      elif i not in state:
        visit(i, stack + [i])
    state[m] = 'done'

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [m])
  assert cycles == []


def test_the_rules_above_can_fail():
  """A planted upward import and a planted cycle are caught (the checks are not vacuous)."""
  assert _layer('autoaug_jax.core.tasks') > _layer('autoaug_jax.run.train')
  GRAPH['autoaug_jax.core.tasks'].add('autoaug_jax.run.train')
  try:
    with pytest.raises(AssertionError, match='core.tasks'):
      test_imports_only_go_down()
    with pytest.raises(AssertionError, match='autoaug_jax.core.tasks'):
      test_no_import_cycles_counting_deferred_imports()
  finally:
    GRAPH['autoaug_jax.core.tasks'].discard('autoaug_jax.run.train')


def _source(module: str) -> str:
  return MODULES[module].read_text()


def test_flags_only_in_entry_points_and_configs_read_above_the_core():
  with_flags = {m for m in MODULES if re.search(r'\bflags\.DEFINE|config_flags\.', _source(m))}
  assert with_flags <= ENTRY_POINTS
  # Below the config layer nothing imports ml_collections: the core, models and data
  # take plain arguments (the builders read the ConfigDict).
  config_readers = {m for m in MODULES if 'ml_collections' in _source(m)}
  assert {m for m in config_readers if _layer(m) > _layer('autoaug_jax.config')} == set()


def test_one_errors_module_and_one_types_module():
  errors = {m for m in MODULES if re.search(r'^class \w+Error\(', _source(m), re.M)}
  assert errors == {'autoaug_jax.errors'}
  params = {m for m in MODULES if re.search(r'^Params = ', _source(m), re.M)}
  assert params == {'autoaug_jax.types'}
  floats = {m for m in MODULES if 'result_type(float)' in _source(m)}
  assert floats == {'autoaug_jax.types'}


def test_importing_the_core_pulls_in_no_heavy_library():
  """The task sampler, meta-step, evaluation and builders import neither TFDS, the Hugging
  Face libraries nor matplotlib: the registries import their modules on use."""
  code = ('import sys\n'
          'import autoaug_jax.config.builders, autoaug_jax.config.validation\n'
          'import autoaug_jax.core.meta_step, autoaug_jax.core.evaluation\n'
          'import autoaug_jax.core.adaptation, autoaug_jax.run.setup\n'
          'heavy = ("tensorflow_datasets", "diffusers", "transformers", "matplotlib")\n'
          'print(sorted(m for m in heavy if m in sys.modules))\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == '[]'
