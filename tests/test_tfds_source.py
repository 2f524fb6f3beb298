"""Any local TFDS dataset as a few-shot source: mocked cifar100, class splits, missing data."""

import jax
import mini_imagenet_fixtures as fx
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import load_config

from autoaug_jax.config import builders
from autoaug_jax.core import tasks
from autoaug_jax.data import mini_imagenet, tfds_source
from autoaug_jax.data.tfds_source import SPLITS
from autoaug_jax.errors import DataError


def data_config(**tfds_fields):
  config = load_config('tiny')
  with config.unlocked():
    config.data.name = 'tfds'
    config.data.dir = '/nonexistent/tfds'
    config.data.images_per_class = 0
    config.data.tfds.name = 'cifar100'
    config.data.tfds.splits = 'train'
    for k, v in tfds_fields.items():
      config.data.tfds[k] = v
  return config.data


@pytest.fixture
def mock_cifar():
  tfds_source._pooled.cache_clear()
  with tfds.testing.mock_data(num_examples=3000):
    yield
  tfds_source._pooled.cache_clear()


def test_proportional_class_split_is_disjoint_and_seeded(mock_cifar):
  splits = {s: builders.load_data_split(data_config(), s, 16) for s in ('train', 'val', 'test')}
  names = [set(s.class_names) for s in splits.values()]
  assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
  assert [s.num_classes for s in splits.values()] == [64, 16, 20]  # 100 classes
  assert splits['train'].images.shape[1:] == (16, 16, 3)  # 32 px resized once
  assert sum(s.images.shape[0] for s in splits.values()) == 3000
  again = builders.load_data_split(data_config(), 'test', 16)
  assert again.class_names == splits['test'].class_names
  other = builders.load_data_split(data_config(split_seed=1), 'test', 16)
  assert other.class_names != splits['test'].class_names


def test_explicit_class_lists_by_id(mock_cifar):
  cfg = data_config(train_classes=(0, 1, '2', '3'), test_classes=(10, 11, 12))
  assert builders.load_data_split(cfg, 'train', 16).class_names == ['0', '1', '2', '3']
  assert builders.load_data_split(cfg, 'test', 16).class_counts().sum() > 0
  with pytest.raises(DataError, match='val split of cifar100 has no classes'):
    builders.load_data_split(cfg, 'val', 16)


def test_a_real_local_tfds_dataset_with_class_names(tmp_path):
  """A dataset on disk (here one `prepare` wrote), read by name with named classes."""
  out = tmp_path / 'tfds'
  mini_imagenet.prepare(fx.write_learn2learn(str(tmp_path / 'src')), str(out), fx.SIZE)
  tfds_source._pooled.cache_clear()
  cfg = data_config(name=f'mini_imagenet/{fx.SIZE}px', splits='train+val+test',
                    train_classes=('n01000002', 'n02000001', 'n03000003'),
                    test_classes=('n01000001', '7'))
  with cfg.unlocked():
    cfg.dir = str(out)
  train = builders.load_data_split(cfg, 'train', fx.SIZE)
  assert train.class_names == ['n01000002', 'n02000001', 'n03000003']
  np.testing.assert_array_equal(train.images[train.labels == 1], fx.class_images('n02000001'))
  test = builders.load_data_split(cfg, 'test', 8)  # label id 7 is the first meta-test class
  assert test.class_names == ['n01000001', 'n03000001']
  assert test.images.shape == (12, 8, 8, 3)
  tfds_source._pooled.cache_clear()


def test_a_task_from_a_mocked_tfds_dataset(mock_cifar):
  split = builders.load_data_split(data_config(), 'train', 16)
  tasks.check_task_shape(split, 3, 2, 2)
  task = tasks.sample_task(tasks.to_device(split), jax.random.key(1), n_way=3, k_shot=2,
                           q_query=2)
  assert task.support_images.shape == (6, 16, 16, 3)
  assert task.query_labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_images_per_class_subset(mock_cifar):
  full = builders.load_data_split(data_config(), 'train', 16)
  cfg = data_config()
  with cfg.unlocked():
    cfg.images_per_class = 3
  sub = builders.load_data_split(cfg, 'train', 16)
  assert sub.class_names == full.class_names
  assert sub.class_counts().tolist() == np.minimum(full.class_counts(), 3).tolist()
  pool = {img.tobytes() for img in full.images}
  assert all(img.tobytes() in pool for img in sub.images)


@pytest.mark.parametrize('fields, message', [
    ({'train_classes': ('1', 'not_a_class'), 'test_classes': ('5',)},
     "'not_a_class' is not a class of this dataset"),
    ({'train_classes': (1, 100), 'test_classes': (5,)}, r'class id 100 is outside \[0, 100\)'),
    ({'train_classes': ('1', 5), 'test_classes': ('5',)},
     "'5' is in both data.tfds.train_classes and data.tfds.test_classes"),
    ({'train_classes': ('1',)}, 'at least data.tfds.train_classes and'),
    ({'proportions': (0.5, 0.5, 0.5)}, 'summing to 1'),
    ({'image_key': 'picture'}, "image_key='picture' is not a feature of cifar100"),
])
def test_bad_class_split_or_keys(mock_cifar, fields, message):
  with pytest.raises(DataError, match=message):
    builders.load_data_split(data_config(**fields), 'train', 16)


def test_missing_dataset_says_where_it_looked_and_downloads_nothing(tmp_path):
  tfds_source._pooled.cache_clear()
  cfg = data_config()
  with cfg.unlocked():
    cfg.dir = str(tmp_path)
  with pytest.raises(DataError, match=rf'not prepared in data.dir=.*{tmp_path}/cifar100.*'
                                      'Nothing is downloaded.*--file_format=array_record'):
    builders.load_data_split(cfg, 'train', 16)
  assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_name(tmp_path):
  tfds_source._pooled.cache_clear()
  cfg = data_config(name='cifar1000')
  with cfg.unlocked():
    cfg.dir = str(tmp_path)
  with pytest.raises(DataError, match="'cifar1000' is not a TFDS dataset"):
    builders.load_data_split(cfg, 'train', 16)


def test_overlapping_splits_are_pooled_without_duplicates(tmp_path):
  out = tmp_path / 'tfds'
  mini_imagenet.prepare(fx.write_learn2learn(str(tmp_path / 'src')), str(out), fx.SIZE)
  sizes = []
  for splits in ('train', 'train+train'):
    tfds_source._pooled.cache_clear()
    cfg = data_config(name=f'mini_imagenet/{fx.SIZE}px', splits=splits, proportions=(0.5, 0.25,
                                                                                       0.25))
    with cfg.unlocked():
      cfg.dir = str(out)
    sizes.append(sum(builders.load_data_split(cfg, s, fx.SIZE).images.shape[0] for s in SPLITS))
  assert sizes == [24, 24]


def test_tfrecord_dataset_is_refused_with_the_rebuild_command(tmp_path):
  out = tmp_path / 'tfds'
  path = mini_imagenet.prepare(fx.write_learn2learn(str(tmp_path / 'src')), str(out), fx.SIZE)
  info = tmp_path / 'tfds' / path.split('tfds/', 1)[1] / 'dataset_info.json'
  info.write_text(info.read_text().replace('"fileFormat": "array_record"',
                                           '"fileFormat": "tfrecord"'))
  tfds_source._pooled.cache_clear()
  cfg = data_config(name=f'mini_imagenet/{fx.SIZE}px', splits='train')
  with cfg.unlocked():
    cfg.dir = str(out)
  with pytest.raises(DataError, match='prepared as .*tfrecord.*only TensorFlow reads.*'
                                      'array_record'):
    builders.load_data_split(cfg, 'train', fx.SIZE)
