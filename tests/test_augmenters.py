"""Augmenters: one interface, shapes and ranges, and what each baseline promises."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate
from autoaug_jax.errors import ConfigError


def _images(n=4, size=8, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


@pytest.mark.parametrize('name', [  # diffusion has its own tests; ResNet-50 is slow
    pytest.param(n, marks=pytest.mark.slow) if n.startswith('resnet') else n
    for n in sorted(set(builders.AUGMENTERS) - {'diffusion'})])
@pytest.mark.parametrize('factor', [1, 3])
def test_shapes_labels_and_range(tiny_config, name, factor):
  tiny_config.augmenter.factor = factor
  aug = builders.augmenter(tiny_config, name)
  params = aug.init(jax.random.key(0), (8, 8, 3))
  images, labels = _images(), jnp.array([0, 1, 2, 0])
  out, out_labels = jax.jit(aug.augment)(params, images, labels, jax.random.key(1))
  m = 0 if name == 'none' else factor * 4
  assert out.shape == (m, 8, 8, 3) and out_labels.shape == (m,)
  np.testing.assert_array_equal(out_labels, np.tile(labels, m // 4))
  assert float(out.min(initial=0.0)) >= 0.0 and float(out.max(initial=1.0)) <= 1.0


def test_duplicate_is_exact_copies(tiny_config):
  tiny_config.augmenter.factor = 2
  aug = builders.augmenter(tiny_config, 'duplicate')
  images = _images()
  out, _ = aug.augment({}, images, jnp.zeros(4, jnp.int32), jax.random.key(0))
  np.testing.assert_array_equal(out, jnp.concatenate([images, images]))


def test_fixed_transforms_change_images_and_flip_only_mirrors(tiny_config):
  tiny_config.augmenter.factor = 4
  aug = builders.augmenter(tiny_config, 'fixed')
  images = _images()
  out, _ = aug.augment({}, images, jnp.zeros(4, jnp.int32), jax.random.key(0))
  assert float(jnp.abs(out - jnp.tile(images, (4, 1, 1, 1))).mean()) > 0.02
  tiny_config.augmenter.fixed.min_crop = 1.0
  tiny_config.augmenter.fixed.noise_std = 0.0
  flip_only = builders.augmenter(tiny_config, 'fixed')
  out, _ = flip_only.augment({}, images, jnp.zeros(4, jnp.int32), jax.random.key(0))
  for i in range(out.shape[0]):
    original = images[i % 4]
    assert (np.allclose(out[i], original, atol=1e-6)
            or np.allclose(out[i], original[:, ::-1], atol=1e-6))


def test_convnet_noise_makes_copies_differ_and_is_keyed(tiny_config):
  tiny_config.augmenter.factor = 2
  aug = builders.augmenter(tiny_config, 'convnet')
  params = aug.init(jax.random.key(0), (8, 8, 3))
  images, labels = _images(), jnp.zeros(4, jnp.int32)
  a, _ = aug.augment(params, images, labels, jax.random.key(5))
  b, _ = aug.augment(params, images, labels, jax.random.key(5))
  c, _ = aug.augment(params, images, labels, jax.random.key(6))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a[:4] - a[4:]).max()) > 1e-4
  assert float(jnp.abs(a - c).max()) > 1e-4
  tiny_config.augmenter.noise_std = 0.0
  quiet = builders.augmenter(tiny_config, 'convnet')
  d, _ = quiet.augment(params, images, labels, jax.random.key(5))
  np.testing.assert_allclose(d[:4], d[4:])


def test_trainable_masks(tiny_config):
  learned = builders.augmenter(tiny_config, 'convnet')
  random = builders.augmenter(tiny_config, 'random_convnet')
  params = learned.init(jax.random.key(0), (8, 8, 3))
  assert learned.has_trainable_params(params)
  assert not random.has_trainable_params(params)
  tiny_config.augmenter.frozen = True
  assert not builders.augmenter(tiny_config).has_trainable_params(params)
  for name in ('none', 'duplicate', 'fixed'):
    aug = builders.augmenter(tiny_config, name)
    assert not aug.has_trainable_params(aug.init(jax.random.key(0), (8, 8, 3)))


def test_unknown_augmenter_is_a_config_error(tiny_config):
  tiny_config.augmenter.name = 'stylegan'
  with pytest.raises(ConfigError, match=r"augmenter.name='stylegan' is unknown; choose one of"):
    validate(tiny_config)
