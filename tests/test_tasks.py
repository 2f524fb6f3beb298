"""On-device task sampler: shapes, labels, disjointness, refusals, spurious colour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoaug_jax.core import tasks
from autoaug_jax.data.split import FewShotSplit
from autoaug_jax.errors import ConfigError


def _numbered_split(counts, size=4):
  """Images whose first pixel encodes their index (so tasks can be traced back)."""
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  n = labels.size
  images = np.zeros((n, size, size, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 0, 1] = np.arange(n) // 256
  images[:, 1, 1, :] = labels[:, None]
  return FewShotSplit(images, labels, [f'c{i}' for i in range(len(counts))], name='numbered')


def _ids(images):
  px = np.round(np.asarray(images)[:, 0, 0, :2] * 255).astype(int)
  return px[:, 0] + 256 * px[:, 1]


def test_task_shapes_labels_and_disjoint_support_query():
  split = _numbered_split([7, 9, 6, 12, 8])
  dev = tasks.to_device(split)
  for seed in range(5):
    t = tasks.sample_task(dev, jax.random.key(seed), n_way=3, k_shot=2, q_query=3)
    assert t.support_images.shape == (6, 4, 4, 3) and t.query_images.shape == (9, 4, 4, 3)
    assert t.support_images.dtype == jnp.float32
    np.testing.assert_array_equal(t.support_labels, np.repeat(np.arange(3), 2))
    np.testing.assert_array_equal(t.query_labels, np.repeat(np.arange(3), 3))
    s_ids, q_ids = _ids(t.support_images), _ids(t.query_images)
    assert len(set(s_ids) | set(q_ids)) == 15  # all distinct, support and query disjoint
    # Each task label maps to one dataset class, distinct across labels.
    true = split.labels[np.concatenate([s_ids, q_ids])]
    labels = np.concatenate([t.support_labels, t.query_labels])
    mapping = {int(a): {int(b) for b in true[labels == a]} for a in range(3)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 3


def test_uneven_classes_never_sample_padding():
  split = _numbered_split([5, 30, 5])  # rows of the class table are padded to 30
  dev = tasks.to_device(split)
  sample = jax.jit(jax.vmap(lambda k: tasks.sample_task(dev, k, n_way=3, k_shot=2, q_query=3)))
  t = sample(jax.random.split(jax.random.key(0), 50))
  for b in range(50):
    ids = np.concatenate([_ids(t.support_images[b]), _ids(t.query_images[b])])
    assert len(set(ids)) == 15
    labels = np.concatenate([t.support_labels[b], t.query_labels[b]])
    for task_label in range(3):
      assert len(set(split.labels[ids[labels == task_label]])) == 1


@pytest.mark.slow
def test_vmap_matches_single_task_sampling():
  dev = tasks.to_device(_numbered_split([6] * 6))
  keys = jax.random.split(jax.random.key(3), 4)
  batched = jax.vmap(lambda k: tasks.sample_task(dev, k, n_way=2, k_shot=2, q_query=2))(keys)
  for i in range(4):
    single = tasks.sample_task(dev, keys[i], n_way=2, k_shot=2, q_query=2)
    np.testing.assert_array_equal(batched.support_images[i], single.support_images)
    np.testing.assert_array_equal(batched.query_images[i], single.query_images)


def test_impossible_shapes_are_refused():
  split = _numbered_split([6, 6, 4])
  tasks.check_task_shape(split, 3, 2, 2)
  with pytest.raises(ConfigError, match='task.n_way=4 but numbered has only 3 classes'):
    tasks.check_task_shape(split, 4, 1, 1)
  with pytest.raises(ConfigError, match=r"k_shot \+ task.q_query = 5 .*1 classes.*'c2'"):
    tasks.check_task_shape(split, 2, 3, 2)


def test_spurious_colour_on_support_backgrounds_only():
  labels = np.repeat(np.arange(3), 4).astype(np.int32)
  images = np.full((12, 4, 4, 3), 128, np.uint8)
  masks = np.zeros((12, 4, 4), np.uint8)
  masks[:, :2] = 255  # top half is "glyph"
  dev = tasks.to_device(FewShotSplit(images, labels, ['a', 'b', 'c'], masks=masks))
  t = tasks.sample_task(dev, jax.random.key(1), n_way=3, k_shot=2, q_query=2, spurious=1.0)
  s = np.asarray(t.support_images)
  np.testing.assert_allclose(s[:, :2], 128 / 255, atol=1e-6)  # foreground untouched
  bg = s[:, 2:].reshape(6, -1, 3)
  assert np.ptp(bg, axis=1).max() < 1e-6  # one colour per image background
  colours = bg[:, 0]
  np.testing.assert_allclose(colours[0], colours[1])  # same class, same colour
  assert np.abs(colours[0] - colours[2]).max() > 1e-3  # different classes differ
  np.testing.assert_allclose(t.query_images, 128 / 255, atol=1e-6)  # queries untouched
