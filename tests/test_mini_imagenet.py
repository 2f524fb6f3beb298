"""MiniImagenet: each layout converted and read back; bad input refused; nothing half-written."""

import os
import pickle
import subprocess
import sys

import jax
import mini_imagenet_fixtures as fx
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO, load_config
from PIL import Image

from autoaug_jax.config import builders
from autoaug_jax.core import tasks
from autoaug_jax.data import images as image_ops
from autoaug_jax.data import mini_imagenet
from autoaug_jax.data import prepared as prepared_lib
from autoaug_jax.errors import ConfigError, DataError

tfds.disable_progress_bar()


def data_config(out, per_class=0, seed=0):
  config = load_config('tiny')
  with config.unlocked():
    config.data.name = 'mini_imagenet'
    config.data.dir = str(out)
    config.data.images_per_class = per_class
    config.data.subset_seed = seed
  return config.data


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The learn2learn fixture, prepared at the source size (16 px)."""
  root = tmp_path_factory.mktemp('mi')
  src = fx.write_learn2learn(str(root / 'src'))
  mini_imagenet.prepare(src, str(root / 'out'), fx.SIZE)
  return root / 'out'


@pytest.mark.parametrize('layout', sorted(fx.WRITERS))
def test_each_layout_converts_and_reads_back_the_same_pixels(tmp_path, layout):
  src = fx.WRITERS[layout](str(tmp_path / 'src'))
  path = mini_imagenet.prepare(src, str(tmp_path / 'out'), fx.SIZE)
  assert path == mini_imagenet.version_dir(str(tmp_path / 'out'), fx.SIZE)
  for split, names in fx.CLASSES.items():
    got = builders.load_data_split(data_config(tmp_path / 'out'), split, fx.SIZE)
    assert got.class_names == names
    assert got.images.shape == (len(names) * fx.PER_CLASS, fx.SIZE, fx.SIZE, 3)
    for c, name in enumerate(names):
      np.testing.assert_array_equal(got.images[got.labels == c],
                                    fx.expected_images(layout, src, name))


def test_files_one_folder_down_are_found(tmp_path):
  fx.write_rfs(str(tmp_path / 'src' / 'miniImageNet'))
  mini_imagenet.prepare(str(tmp_path / 'src'), str(tmp_path / 'out'), fx.SIZE)
  assert builders.load_data_split(data_config(tmp_path / 'out'), 'test', 16).num_classes == 3


def test_upscaled_to_the_paper_size_and_to_84(tmp_path):
  src = fx.write_rfs(str(tmp_path / 'src'))
  for size in (84, 128):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), size)
  assert mini_imagenet.prepared_sizes(str(tmp_path / 'out')) == [84, 128]
  for size in (84, 128):
    got = builders.load_data_split(data_config(tmp_path / 'out'), 'test', size)
    original = fx.class_images(fx.CLASSES['test'][2])
    np.testing.assert_array_equal(got.images[got.labels == 2],
                                  image_ops.resize_all(original, size))


def test_resized_once_with_antialiasing(tmp_path):
  src = fx.write_learn2learn(str(tmp_path / 'src'))
  mini_imagenet.prepare(src, str(tmp_path / 'out'), 8)
  got = builders.load_data_split(data_config(tmp_path / 'out'), 'train', 8)
  original = fx.class_images(fx.CLASSES['train'][0])[0]
  np.testing.assert_array_equal(got.images[0], image_ops.resize(original, 8))
  # Antialiased 2x reduction is close to the 2x2 box average; nearest-neighbour is not.
  box = original.reshape(8, 2, 8, 2, 3).mean((1, 3))
  assert np.abs(got.images[0] - box).mean() < 4.0
  assert np.abs(got.images[0] - box).mean() < np.abs(original[::2, ::2] - box).mean()


def test_seeded_subset_per_class(prepared):
  full = builders.load_data_split(data_config(prepared), 'train', 16)
  a = builders.load_data_split(data_config(prepared, per_class=4), 'train', 16)
  b = builders.load_data_split(data_config(prepared, per_class=4), 'train', 16)
  c = builders.load_data_split(data_config(prepared, per_class=4, seed=1), 'train', 16)
  assert a.class_counts().tolist() == [4, 4, 4, 4]
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.array_equal(a.images, c.images)
  for k in range(4):  # a subset of the class's own images
    pool = {img.tobytes() for img in full.images[full.labels == k]}
    assert all(img.tobytes() in pool for img in a.images[a.labels == k])


def test_task_from_a_converted_dataset(prepared):
  split = builders.load_data_split(data_config(prepared), 'train', 16)
  device_split = tasks.to_device(split)
  task = jax.jit(lambda k: tasks.sample_task(device_split, k, n_way=3, k_shot=2, q_query=3))(
      jax.random.key(0))
  assert task.support_images.shape == (6, 16, 16, 3)
  assert task.query_images.shape == (9, 16, 16, 3)
  assert task.support_labels.tolist() == [0, 0, 1, 1, 2, 2]
  source = {img.tobytes(): int(label) for img, label in zip(split.images, split.labels,
                                                             strict=True)}

  def origin(images):
    return [np.asarray(np.round(np.asarray(img) * 255), np.uint8).tobytes() for img in images]

  support, query = origin(task.support_images), origin(task.query_images)
  assert not set(support) & set(query)
  assert len(set(support + query)) == 15
  # Each task label is one source class, the same for support and query, and
  # the three labels are three different classes.
  for images, labels in ((support, task.support_labels), (query, task.query_labels)):
    for img, label in zip(images, labels.tolist(), strict=True):
      assert source[img] == source[support[2 * label]]
  assert len({source[support[2 * label]] for label in range(3)}) == 3


def test_class_shorter_than_k_plus_q_is_named(prepared):
  split = builders.load_data_split(data_config(prepared, per_class=3), 'val', 16)
  with pytest.raises(ConfigError, match=r"k_shot \+ task.q_query = 5.*'n02000001'"):
    tasks.check_task_shape(split, 3, 2, 3)


# --- bad input ---------------------------------------------------------------------------------

def _l2l(tmp_path):
  return fx.write_learn2learn(str(tmp_path / 'src'))


def _break(path, data: bytes):
  with open(path, 'wb') as f:
    f.write(data)


def test_html_page_saved_as_pickle(tmp_path):
  src = _l2l(tmp_path)
  _break(os.path.join(src, 'mini-imagenet-cache-test.pkl'),
         b'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>')
  with pytest.raises(DataError, match=r'mini-imagenet-cache-test.pkl is an HTML page.*again'):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)
  assert not os.path.exists(tmp_path / 'out')


def test_truncated_pickle(tmp_path):
  src = _l2l(tmp_path)
  path = os.path.join(src, 'mini-imagenet-cache-train.pkl')
  with open(path, 'rb') as f:
    data = f.read()
  _break(path, data[:len(data) // 2])
  with pytest.raises(DataError, match=r'cache-train.pkl is truncated or corrupt.*~813 MB'):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)


def test_pickle_that_would_run_code_is_refused(tmp_path):
  src = _l2l(tmp_path)
  with open(os.path.join(src, 'mini-imagenet-cache-val.pkl'), 'wb') as f:
    pickle.dump({'image_data': os.system, 'class_dict': {}}, f)
  os.remove(os.path.join(src, 'mini-imagenet-cache-validation.pkl'))
  with pytest.raises(DataError, match='contains objects other than arrays'):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)


def test_missing_split_file(tmp_path):
  src = fx.write_csv(str(tmp_path / 'src'))
  os.remove(os.path.join(src, 'val.csv'))
  with pytest.raises(DataError, match=r'holds train.csv, test.csv \(csv layout\) but not '
                                      r'val.csv or validation.csv.*restore the missing one'):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)


def test_empty_folder_lists_the_layouts(tmp_path):
  with pytest.raises(DataError, match='No MiniImagenet split files.*learn2learn.*csv.*rfs'):
    mini_imagenet.prepare(str(tmp_path), str(tmp_path / 'out'), 16)


def test_unreadable_and_grey_jpegs(tmp_path):
  src = fx.write_csv(str(tmp_path / 'src'))
  bad = os.path.join(src, 'images', 'n02000001' + '00000003.jpg')
  with open(bad, 'rb') as f:
    head = f.read(200)
  _break(bad, head)  # truncated JPEG
  grey = os.path.join(src, 'images', 'n03000002' + '00000001.jpg')
  Image.fromarray(fx.image('n03000002', 1)[..., 0]).save(grey)
  with pytest.raises(DataError, match=r'1 images could not be decoded: .*n0200000100000003.jpg'):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)
  assert not os.path.exists(mini_imagenet.version_dir(str(tmp_path / 'out'), 16))
  mini_imagenet.prepare(src, str(tmp_path / 'out'), 16, skip_unreadable=True)
  val = builders.load_data_split(data_config(tmp_path / 'out'), 'val', 16)
  assert val.class_counts().tolist() == [5, 6, 6]
  test = builders.load_data_split(data_config(tmp_path / 'out'), 'test', 16)
  img = test.images[test.labels == 1][1]
  assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])


def test_class_in_two_splits(tmp_path):
  classes = dict(fx.CLASSES, test=['n03000001', 'n01000002', 'n03000003'])
  src = fx.write_rfs(str(tmp_path / 'src'), classes)
  with pytest.raises(DataError, match=r"'n01000002' appears in both .*train_phase_train.*_test"):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)


def test_wrong_image_shape(tmp_path):
  src = _l2l(tmp_path)
  path = os.path.join(src, 'mini-imagenet-cache-test.pkl')
  with open(path, 'rb') as f:
    obj = pickle.load(f)
  obj['image_data'] = obj['image_data'].transpose(0, 3, 1, 2)
  with open(path, 'wb') as f:
    pickle.dump(obj, f)
  with pytest.raises(DataError, match=r'\[n, H, W, 3\], got \(18, 3, 16, 16\).*channels-first'):
    mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)


def test_out_holding_a_different_dataset(tmp_path):
  out = str(tmp_path / 'out')
  first = mini_imagenet.prepare(fx.write_learn2learn(str(tmp_path / 'a')), out, 16)
  before = sorted(os.listdir(first))
  assert mini_imagenet.prepare(str(tmp_path / 'a'), out, 16) == first  # same source: no-op
  other = fx.write_rfs(str(tmp_path / 'b'))
  with pytest.raises(DataError, match='already holds a different dataset.*--overwrite'):
    mini_imagenet.prepare(other, out, 16)
  assert sorted(os.listdir(first)) == before
  mini_imagenet.prepare(other, out, 16, overwrite=True)
  meta = prepared_lib.read_metadata(first)
  assert meta['source']['layout'] == 'rfs'


def test_overwrite_rebuilds_even_the_same_source(tmp_path):
  src = _l2l(tmp_path)
  path = mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)
  info = os.path.join(path, 'dataset_info.json')
  os.utime(info, ns=(0, 0))
  mini_imagenet.prepare(src, str(tmp_path / 'out'), 16)
  assert os.stat(info).st_mtime_ns == 0  # no-op
  mini_imagenet.prepare(src, str(tmp_path / 'out'), 16, overwrite=True)
  assert os.stat(info).st_mtime_ns > 0  # rebuilt
  assert not [p for p in os.listdir(os.path.dirname(path)) if p != '1.0.0']


def test_home_relative_paths(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.delenv('TFDS_DATA_DIR', raising=False)
  _l2l(tmp_path)
  path = mini_imagenet.prepare('~/src', '~/tensorflow_datasets', 16)
  assert path.startswith(str(tmp_path / 'tensorflow_datasets'))
  cfg = data_config('')  # '' = ~/tensorflow_datasets, like TFDS
  assert builders.load_data_split(cfg, 'test', 16).num_classes == 3


def test_stale_temporary_folders_are_removed_running_ones_kept(tmp_path):
  src, out = _l2l(tmp_path), tmp_path / 'out'
  dead = out / '.prepare-tmp-123-dead'
  (dead / 'mini_imagenet').mkdir(parents=True)
  (dead / '.lock').touch()
  running, fd = prepared_lib._lock_tmp(str(out))  # held, as by a live conversion
  try:
    mini_imagenet.prepare(src, str(out), 16)
    assert not dead.exists() and os.path.isdir(running)
  finally:
    os.close(fd)


def test_interrupted_conversion_leaves_no_dataset(tmp_path, monkeypatch):
  src = _l2l(tmp_path)
  calls = []

  def failing_encode(image, encoding):
    calls.append(1)
    if len(calls) > 20:
      raise KeyboardInterrupt
    return real(image, encoding)

  real = image_ops.encode
  monkeypatch.setattr(image_ops, 'encode', failing_encode)
  out = tmp_path / 'out'
  with pytest.raises(KeyboardInterrupt):
    mini_imagenet.prepare(src, str(out), 16)
  assert mini_imagenet.prepared_sizes(str(out)) == []
  assert not [p for p in os.listdir(out) if p.startswith('.prepare-tmp')]
  with pytest.raises(DataError, match='No prepared MiniImagenet.*autoaug_jax.data.prepare'):
    builders.load_data_split(data_config(out), 'train', 16)


def test_memory_check_refuses_a_split_that_does_not_fit(prepared, monkeypatch):
  split = builders.load_data_split(data_config(prepared), 'train', 16)
  monkeypatch.setattr(tasks, '_free_bytes', lambda device: (split.images.nbytes, 'test memory'))
  with pytest.raises(ConfigError, match=r'does not fit.*data.images_per_class'):
    tasks.check_memory([split], jax.devices())
  monkeypatch.setattr(tasks, '_free_bytes', lambda device: (100 * split.images.nbytes, 'x'))
  assert tasks.check_memory([split], jax.devices()) == split.images.nbytes


# --- entry points ------------------------------------------------------------------------------

def _run(args, **kwargs):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=600, **kwargs)


def test_prepare_cli_reports_bad_input_without_traceback(tmp_path):
  src = _l2l(tmp_path)
  _break(os.path.join(src, 'mini-imagenet-cache-train.pkl'), b'<html>quota exceeded</html>')
  result = _run(['autoaug_jax.data.prepare', f'--source={src}', f'--out={tmp_path / "out"}'])
  assert result.returncode != 0
  assert 'is an HTML page' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_training_run_from_a_converted_fixture(tmp_path):
  src = fx.write_csv(str(tmp_path / 'src'))
  out = tmp_path / 'data'
  result = _run(['autoaug_jax.data.prepare', f'--source={src}', f'--out={out}',
                 '--image_size=16'])
  assert result.returncode == 0, result.stderr[-2000:]
  workdir = tmp_path / 'run'
  result = _run(['autoaug_jax.main', '--config=configs/tiny.py', f'--workdir={workdir}',
                 '--config.data.name=mini_imagenet', f'--config.data.dir={out}',
                 '--config.data.images_per_class=0', '--config.num_meta_steps=2'])
  assert result.returncode == 0, result.stderr[-3000:]
  report = (workdir / 'report.md').read_text()
  assert f'mini_imagenet in {out} (meta-test classes: 3)' in report
  assert 'learned' in report
