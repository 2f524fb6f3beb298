"""Shared fixtures: tiny configs, a private glyph cache, fast XLA compiles.

XLA's CPU backend optimisation level 0 compiles the tests' many small
programs about 5x faster; tests compare numbers between code paths, not
speed. Set AUTOAUG_TEST_XLA_FLAGS to override (e.g. to '' for default flags).

One persistent compilation cache serves the whole run: many tests (and the
entry points they start as subprocesses) compile the same tiny-config
programs, and a cached executable is the one XLA would compile again. It is
made by the first process (pytest's controller under xdist), inherited by
the workers and subprocesses through the environment, and removed by its
maker at exit. Set JAX_COMPILATION_CACHE_DIR yourself to keep one between runs.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault('XLA_FLAGS', os.environ.get('AUTOAUG_TEST_XLA_FLAGS',
                                                  '--xla_backend_optimization_level=0'))
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='autoaug_jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault('DIFFUSERS_VERBOSITY', 'error')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
  """configs/NAME.py's get_config(), loaded by path as absl's config flag does."""
  from autoaug_jax.config.schema import config_from_file
  return config_from_file(REPO / 'configs' / f'{name}.py')


@pytest.fixture(scope='session', autouse=True)
def glyph_cache(tmp_path_factory):
  """Every test renders into (and reuses) one private cache, never ~/.cache."""
  path = tmp_path_factory.mktemp('glyph_cache')
  old = os.environ.get('AUTOAUG_JAX_CACHE')
  os.environ['AUTOAUG_JAX_CACHE'] = str(path)
  yield path
  if old is None:
    os.environ.pop('AUTOAUG_JAX_CACHE', None)
  else:
    os.environ['AUTOAUG_JAX_CACHE'] = old


@pytest.fixture
def tiny_config():
  return load_config('tiny')


@pytest.fixture(scope='session')
def tiny_splits():
  """The tiny config's train/val/test splits (16x16, 8 images per class)."""
  from autoaug_jax.config import builders
  config = load_config('tiny')
  return {name: builders.load_split(config, name)
          for name in ('train', 'val', 'test')}
