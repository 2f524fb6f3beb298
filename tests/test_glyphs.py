"""The embedded glyph dataset: deterministic, cached, split, and varied within a class."""

import os

import numpy as np
import pytest

from autoaug_jax.config.validation import validate
from autoaug_jax.data import glyphs
from autoaug_jax.errors import ConfigError


def test_classes_and_split_sizes():
  classes = glyphs.class_fonts()
  assert len(classes) == glyphs.NUM_CLASSES == 100
  assert len({ch for ch, _ in classes}) == 100
  assert all(len(fonts) >= 4 for _, fonts in classes)
  splits = glyphs.split_classes()
  assert {k: len(v) for k, v in splits.items()} == {'train': 64, 'val': 16, 'test': 20}
  together = np.concatenate(list(splits.values()))
  assert sorted(together.tolist()) == list(range(100))  # disjoint and complete


def test_generation_is_deterministic_and_varied():
  a_img, a_alpha = glyphs.generate(16, 3)
  b_img, b_alpha = glyphs.generate(16, 3)
  np.testing.assert_array_equal(a_img, b_img)
  np.testing.assert_array_equal(a_alpha, b_alpha)
  assert a_img.shape == (100, 3, 16, 16, 3) and a_img.dtype == np.uint8
  # Nuisance factors differ between images of a class...
  assert np.abs(a_img[:, 0].astype(int) - a_img[:, 1].astype(int)).mean() > 20
  # ...and every image shows a glyph (non-trivial foreground coverage).
  coverage = (a_alpha > 127).mean(axis=(2, 3))
  assert coverage.min() > 0.02 and coverage.max() < 0.9


def test_cache_roundtrip_and_corrupt_cache_is_regenerated(tmp_path):
  images, alphas = glyphs.cached(8, 2, str(tmp_path))
  files = os.listdir(tmp_path)
  assert files == [f'glyphs-v{glyphs.VERSION}-s8-n2.npz']
  again, _ = glyphs.cached(8, 2, str(tmp_path))
  np.testing.assert_array_equal(images, again)
  path = tmp_path / files[0]
  path.write_bytes(b'<html>not a zip</html>')
  regenerated, _ = glyphs.cached(8, 2, str(tmp_path))
  np.testing.assert_array_equal(images, regenerated)


@pytest.mark.parametrize('split,classes', [('train', 64), ('val', 16), ('test', 20)])
def test_load_split(tiny_config, tiny_splits, split, classes):
  s = tiny_splits[split]
  n = tiny_config.data.images_per_class
  assert s.num_classes == classes
  assert s.images.shape == (classes * n, 16, 16, 3)
  np.testing.assert_array_equal(s.class_counts(), np.full(classes, n))
  assert s.masks.shape == s.images.shape[:3]


def test_unknown_split_and_dataset(tiny_config):
  with pytest.raises(ValueError, match='Unknown split'):
    glyphs.load_split('holdout', 16, images_per_class=2)
  tiny_config.data.name = 'imagenet21k'
  with pytest.raises(ConfigError, match="data.name='imagenet21k' is unknown"):
    validate(tiny_config)
