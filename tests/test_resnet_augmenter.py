"""The ResNet encoder-decoder augmenter: real loading path, exact meta-gradient, frozen trunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from resnet_fixtures import save_tiny_resnet
from test_meta_gradient import _problem as meta_problem

from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate
from autoaug_jax.core import sharding, tasks
from autoaug_jax.errors import ConfigError
from autoaug_jax.pretrained import resnet


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  path = tmp_path_factory.mktemp('resnet_aug') / 'tiny-resnet'
  save_tiny_resnet(path)
  return str(path)


def resnet_config(config, weights, frozen):
  with config.unlocked():
    config.augmenter.name = 'resnet50'
    config.augmenter.weights = weights
    config.augmenter.frozen = frozen
  validate(config)
  return config


@pytest.mark.slow
@pytest.mark.parametrize('size', [16, 32])
def test_synthetic_images_shape_and_range(tiny_config, weights, size):
  augmenter = builders.augmenter(resnet_config(tiny_config, weights, True))
  assert augmenter.mean == (0.5, 0.5, 0.5)  # from the directory's preprocessor_config.json
  params = augmenter.init(jax.random.key(0), (size, size, 3))
  images = jax.random.uniform(jax.random.key(1), (4, size, size, 3))
  out = augmenter.synthesize(params, images, jax.random.key(2))
  assert out.shape == (1, 4, size, size, 3)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  loaded = resnet.load(weights)
  jax.tree.map(np.testing.assert_array_equal, params['trunk'], loaded.variables)


def _direction(params, part, rs):
  direction = jax.tree.map(jnp.zeros_like, params)
  direction[part] = jax.tree.map(lambda p: jnp.asarray(rs.normal(size=p.shape)), params[part])
  direction['trunk']['batch_stats'] = jax.tree.map(jnp.zeros_like, params['trunk']['batch_stats'])
  return direction


def _dot(a, b):
  return sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


@pytest.mark.slow
def test_augmenter_gradient_matches_finite_differences(tiny_config, weights):
  """Trunk and decoder gradients of a smooth function of S' against central differences."""
  augmenter = builders.augmenter(resnet_config(tiny_config, weights, False))
  with jax.enable_x64(True):
    params = augmenter.init(jax.random.key(0), (32, 32, 3))  # 32: the decoder's own size
    # Non-zero decoder biases: with the fresh zeros, every pixel where the trunk's
    # final ReLU outputs exactly 0 would sit exactly on a decoder ReLU's kink.
    bias_noise = iter(jax.random.split(jax.random.key(4), 16))
    params['decoder'] = {name: dict(layer, bias=layer['bias'] + 0.05 * jax.random.normal(
        next(bias_noise), layer['bias'].shape, jnp.float64))
        for name, layer in params['decoder'].items()}
    images = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3), jnp.float64)
    target = jax.random.uniform(jax.random.key(2), (1, 3, 32, 32, 3), jnp.float64)

    def loss(p):
      return jnp.sum((augmenter.synthesize(p, images, jax.random.key(3)) - target) ** 2)

    loss_fn, grads = jax.jit(loss), jax.jit(jax.grad(loss))(params)
    rs = np.random.default_rng(0)
    # The decoder's and trunk's ReLUs make this kinked: central differences agree
    # to 1e-3 or better here (a wrong gradient is off by O(1)), hence the tolerance.
    eps = 1e-7
    for part in ('decoder', 'trunk'):
      direction = _direction(params, part, rs)
      plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
      minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
      fd = (float(loss_fn(plus)) - float(loss_fn(minus))) / (2 * eps)
      analytic = _dot(grads, direction)
      assert analytic != 0 and abs(fd - analytic) <= 2e-3 * abs(analytic), (part, fd, analytic)


@pytest.mark.slow
def test_meta_gradient_reaches_trunk_and_decoder_consistently(tiny_config, tiny_splits, weights):
  """Reverse mode (what training uses) equals forward mode along random directions.

  Reverse mode runs the CPU layers (the decoder's sub-pixel and
  canonical-gradient convolutions, reverse mode only); forward mode the native
  ones (`augmenter.conv_impl='native'`, and the classifier's `conv_impl='native'`
  against its CPU default 'native_vjp'): the same function, so this also checks
  the custom layers' gradients inside the meta-step.

  Central differences of the meta-loss itself are not a usable reference here:
  the inner SGD steps use the gradients of ReLUs and max-pools, which jump
  where an activation changes sign or a pooling window changes its maximum, so
  the meta-loss is piecewise smooth with small jumps (measured: 4e-5 within a
  2.5e-8 step along a decoder direction, where the near-constant decoded
  images of a fresh decoder create many near-ties). The augmenter's own
  derivative is checked against finite differences above, and the inner/outer
  differentiation against finite differences with the ConvNet augmenter in
  test_meta_gradient.py.
  """
  config = resnet_config(tiny_config, weights, False)
  with config.unlocked():
    config.meta_batch_size = 1
  native = resnet_config(config.copy_and_resolve_references(), weights, False)
  with native.unlocked():
    native.augmenter.conv_impl = 'native'
    native.classifier.conv_impl = 'native'  # the CPU default, native_vjp, is reverse only
  with jax.enable_x64(True):
    meta_loss, params, run = meta_problem(config, tiny_splits['train'])
    assert run.objective.augmenter.decoder_impl == 'patches'
    native_loss, _, _ = meta_problem(native, tiny_splits['train'])
    grads = jax.jit(jax.grad(meta_loss))(params)
    rs = np.random.default_rng(1)
    forward_mode = jax.jit(lambda p, d: jax.jvp(native_loss, (p,), (d,)))  # one compile
    for part in ('decoder', 'trunk'):
      direction = _direction(params, part, rs)
      _, tangent = forward_mode(params, direction)
      analytic = _dot(grads, direction)
      assert analytic != 0
      np.testing.assert_allclose(float(tangent), analytic, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize('frozen', [True, False])
def test_frozen_trunk_gets_exactly_zero_update(tiny_config, tiny_splits, weights, frozen):
  config = resnet_config(tiny_config, weights, frozen)
  mesh = sharding.make_mesh(1)
  run = builders.meta_setup(config)
  state = run.init_state(mesh)
  before = jax.tree.map(np.asarray, state.params)
  split = tasks.to_device(tiny_splits['train'], mesh)
  step = run.meta_step(mesh, config.meta_batch_size)
  for _ in range(2):
    state, _ = step(state, split, run.placed_constants(mesh))
  after = jax.tree.map(np.asarray, state.params)
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
  assert all(jax.tree.leaves(moved['decoder']))
  assert not any(jax.tree.leaves(moved['trunk']['batch_stats']))  # running stats: never trained
  trunk_moved = jax.tree.leaves(moved['trunk']['params'])
  assert (not any(trunk_moved)) if frozen else all(trunk_moved)


def test_missing_weights_directory_is_refused_before_anything_runs(tiny_config, tmp_path):
  with tiny_config.unlocked():
    tiny_config.augmenter.name = 'resnet50'
    tiny_config.augmenter.weights = str(tmp_path / 'no-such-dir')
  with pytest.raises(ConfigError, match=r'augmenter.weights=.*no-such-dir.* is not a directory'):
    validate(tiny_config)


@pytest.mark.slow
def test_random_init_without_weights():
  from resnet_fixtures import TINY

  from autoaug_jax.augmenters.resnet import ResNetAugmenter
  arch = resnet.architecture('', TINY)
  overrides = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in TINY.items())
  augmenter = ResNetAugmenter(arch, config_overrides=overrides)  # hashable: a jit static
  params = augmenter.init(jax.random.key(0), (32, 32, 3))
  out = augmenter.synthesize(params, jnp.full((2, 32, 32, 3), 0.5), jax.random.key(1))
  assert out.shape == (1, 2, 32, 32, 3)


def test_decoder_impl_follows_conv_impl_and_stays_native_on_accelerators(monkeypatch):
  """'auto': the sub-pixel decoder where it was measured faster (CPU), native elsewhere."""
  assert builders.decoder_impl('auto') == 'patches'  # the tests run on CPU
  assert builders.decoder_impl('native') == 'native'
  assert builders.decoder_impl('patches') == 'patches'
  monkeypatch.setattr(builders, 'platform', lambda: 'gpu')
  assert builders.decoder_impl('auto') == 'native'
  assert builders.conv_impl('auto') == 'patches'  # the trunk's choice is its own
