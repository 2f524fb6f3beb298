"""ResNet weights: the real loading path on a tiny saved model; our apply against transformers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from resnet_fixtures import TINY, save_tiny_resnet

from autoaug_jax.errors import WeightsError
from autoaug_jax.pretrained import resnet


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  path = tmp_path_factory.mktemp('resnet') / 'tiny-resnet'
  return path, save_tiny_resnet(path)


@pytest.mark.slow
def test_loads_through_from_pretrained(saved):
  path, model = saved
  loaded = resnet.load(str(path))
  assert loaded.source == str(path)
  assert loaded.arch == resnet.Architecture(8, (8, 16, 16, 24), (1, 2, 1, 1))
  assert (loaded.mean, loaded.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, model.params)
  assert resnet.load(str(path), expected=loaded.arch).arch == loaded.arch
  other = resnet.Architecture(8, (8, 16, 16, 32), (1, 2, 1, 1))
  with pytest.raises(WeightsError, match=r'tiny-resnet: weights for .* expected .* the '
                                                r'directory changed after the run was configured'):
    resnet.load(str(path), expected=other)


@pytest.mark.slow
@pytest.mark.parametrize('impl', ['patches', 'native'])
def test_apply_matches_transformers(saved, impl):
  path, model = saved
  loaded = resnet.load(str(path))
  x = jax.random.normal(jax.random.key(0), (2, 40, 40, 3))
  ours = resnet.apply(loaded.arch, loaded.variables, x, impl=impl)
  # transformers' Flax ResNet takes and returns channels-first through its public call.
  theirs = jnp.transpose(model(jnp.transpose(x, (0, 3, 1, 2))).last_hidden_state, (0, 2, 3, 1))
  assert ours.shape == (2, 2, 2, 24)
  np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_split_at_any_block_equals_the_whole(saved):
  loaded = resnet.load(str(saved[0]))
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  whole = resnet.apply(loaded.arch, loaded.variables, x)
  for k in range(loaded.arch.num_blocks + 1):
    bottom = resnet.apply(loaded.arch, loaded.variables, x, -1, k)
    top_vars = resnet.block_variables(loaded.arch, loaded.variables, k)
    np.testing.assert_allclose(resnet.apply(loaded.arch, top_vars, bottom, k), whole,
                               rtol=1e-5, atol=1e-5)
  assert 'embedder' not in resnet.block_variables(loaded.arch, loaded.variables, 0)['params']


def test_random_init_is_resnet50_shaped_without_weights():
  arch = resnet.architecture('')  # transformers' ResNetConfig defaults
  assert (arch.depths, arch.hidden_sizes, arch.num_blocks) == ((3, 4, 6, 3),
                                                               (256, 512, 1024, 2048), 16)
  tiny = resnet.load('', seed=1, config_overrides=TINY)
  assert tiny.source == 'random init (seed 1)' and tiny.arch.num_blocks == 5


def test_missing_or_wrong_directories(tmp_path):
  with pytest.raises(WeightsError, match=r'No ResNet weights directory at .*nowhere.*'
                                                'save_pretrained'):
    resnet.load(str(tmp_path / 'nowhere'))
  with pytest.raises(WeightsError, match='no config.json'):
    resnet.load(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'resnet'}))
  with pytest.raises(WeightsError, match='holds no weights'):
    resnet.load(str(tmp_path))


def test_pytorch_only_directory_needs_torch(tmp_path):
  try:
    import torch  # noqa: F401
    pytest.skip('torch is installed: the conversion path itself is exercised elsewhere')
  except ImportError:
    pass
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'resnet'}))
  (tmp_path / 'model.safetensors').write_bytes(b'')
  with pytest.raises(WeightsError, match=r'only PyTorch weights.*torch'):
    resnet.load(str(tmp_path))
