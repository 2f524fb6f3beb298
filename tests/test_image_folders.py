"""Class-folder datasets: each layout prepared and read back; bad trees refused; atomic."""

import os
import subprocess
import sys

import folder_fixtures as fx
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO, load_config
from PIL import Image

from autoaug_jax.config import builders, validation
from autoaug_jax.data import image_folders
from autoaug_jax.data import images as image_ops
from autoaug_jax.data import prepared as prepared_lib
from autoaug_jax.errors import ConfigError, DataError

tfds.disable_progress_bar()


def data_config(out, name, class_split='auto', per_class=0):
  config = load_config('tiny')
  with config.unlocked():
    config.data.name = 'tfds'
    config.data.tfds.name = name
    config.data.tfds.class_split = class_split
    config.data.dir = str(out)
    config.data.images_per_class = per_class
  return config.data


def _expected(path, size=16, crop='squash'):
  return image_ops.fit(image_ops.read_file(path)[0], size, crop)


def _by_class(split):
  return {name: split.images[split.labels == c] for c, name in enumerate(split.class_names)}


def test_flat_tree_as_users_have_it(tmp_path):
  """Mixed formats and extensions, grey of another size, palette, alpha, CMYK, a nested
  folder, a stray text file and hidden files: all read, converted, skipped and counted."""
  root = fx.write_tree(str(tmp_path / 'My Fruit'), count=11)
  odd = os.path.join(root, 'apple')
  fx.save(os.path.join(odd, 'GREY.PNG'), Image.fromarray(fx.pattern('g', 0, (40, 40))[..., 0]))
  fx.save(os.path.join(odd, 'palette.gif'), Image.fromarray(fx.pattern('p', 0)).quantize(16))
  fx.save(os.path.join(odd, 'alpha.png'), Image.fromarray(fx.pattern('a', 0)).convert('RGBA'))
  fx.save(os.path.join(odd, 'cmyk.JPG'), Image.fromarray(fx.pattern('c', 0)).convert('CMYK'))
  fx.save(os.path.join(odd, 'more', 'deeper', 'nested.jpeg'), fx.pattern('n', 0))
  with open(os.path.join(odd, 'notes.txt'), 'w') as f:
    f.write('not an image')
  open(os.path.join(odd, '.DS_Store'), 'w').close()
  fx.save(os.path.join(root, 'banana', '.thumbs', 'hidden.png'), fx.pattern('h', 0))
  with open(os.path.join(root, 'LICENSE'), 'w') as f:
    f.write('CC-BY')

  out = tmp_path / 'data'
  path = image_folders.prepare(root, str(out), 16)
  assert path == str(out / 'my_fruit' / '1.0.0')
  meta = prepared_lib.read_metadata(path)
  assert meta['skipped'] == {'hidden': 2, 'not an image': 1, 'outside a class folder': 1}
  assert meta['class_counts'] == {'images': [16, 11, 11, 11, 11]}
  assert 'class_split' not in meta  # a flat tree is split at training time

  splits = {s: builders.load_data_split(data_config(out, 'my_fruit'), s, 16)
            for s in ('train', 'val', 'test')}
  names = [n for s in splits.values() for n in s.class_names]
  assert sorted(names) == fx.FLAT_CLASSES  # every class in exactly one split
  split = next(s for s in splits.values() if 'apple' in s.class_names)
  apple = _by_class(split)['apple']
  files = sorted(os.path.join(p, n) for p, _, ns in os.walk(odd) for n in ns
                 if not n.startswith('.') and not n.endswith('.txt')
                 and '.thumbs' not in p)
  assert len(files) == 16
  # Stored as lossless PNG in sorted path order: the exact pixels of each decoded file.
  for stored, file in zip(apple, sorted(files), strict=True):
    np.testing.assert_array_equal(stored, _expected(file))


def test_split_tree_keeps_its_class_split(tmp_path):
  classes = {'train': fx.SPLIT_CLASSES['train'], 'validation': fx.SPLIT_CLASSES['val'],
             'test': fx.SPLIT_CLASSES['test']}
  root = fx.write_tree(str(tmp_path / 'zoo'), classes, ext='.JPG')
  out = tmp_path / 'data'
  image_folders.prepare(root, str(out), 16, name='zoo_folders')
  for split, names in fx.SPLIT_CLASSES.items():
    got = builders.load_data_split(data_config(out, 'zoo_folders'), split, 16)
    assert got.class_names == names
    assert got.class_counts().tolist() == [fx.PER_CLASS] * len(names)
  # Explicitly re-split by proportions, or every class a test class.
  resplit = {s: builders.load_data_split(data_config(out, 'zoo_folders', 'proportions'), s, 16)
             for s in ('train', 'val', 'test')}
  assert resplit['test'].class_names != fx.SPLIT_CLASSES['test']
  everything = builders.load_data_split(data_config(out, 'zoo_folders', 'all_test'), 'test', 16)
  assert sorted(everything.class_names) == sorted(sum(fx.SPLIT_CLASSES.values(), []))
  with pytest.raises(DataError, match='all_test makes every class.*evaluat'):
    builders.load_data_split(data_config(out, 'zoo_folders', 'all_test'), 'train', 16)


def test_split_tree_without_val_and_seeded_subsets(tmp_path):
  root = fx.write_tree(str(tmp_path / 'two'), {'Train': ['a1', 'a2', 'a3'], 'TEST': ['b1', 'b2']})
  out = tmp_path / 'data'
  image_folders.prepare(root, str(out), 16)
  cfg = data_config(out, 'two', per_class=5)
  test = builders.load_data_split(cfg, 'test', 16)
  assert test.class_names == ['b1', 'b2'] and test.class_counts().tolist() == [5, 5]
  with pytest.raises(DataError, match='val split of two has no classes.*val_every=0'):
    builders.load_data_split(cfg, 'val', 16)


def test_center_crop_keeps_the_aspect(tmp_path):
  root = str(tmp_path / 'wide')
  for name in ('left', 'right'):
    for i in range(10):
      image = np.zeros((10, 30, 3), np.uint8)
      image[:, 10:20] = 200  # the central square is bright, the sides dark
      fx.save(os.path.join(root, name, f'{i}.png'), image)
  for crop, mean in (('center', 200), ('squash', 200 / 3)):
    out = tmp_path / crop
    image_folders.prepare(root, str(out), 10, crop=crop)
    split = builders.load_data_split(data_config(out, 'wide', 'all_test'), 'test', 10)
    assert abs(split.images.mean() - mean) < 8, (crop, split.images.mean())


def _nothing_written(out):
  return not out.exists() or not [p for p in os.listdir(out) if not p.startswith('.prepare')]


def _two_classes(root, count=fx.PER_CLASS):
  return fx.write_tree(root, ['c1', 'c2'], count=count)


BAD_TREES = {
    'empty class': (lambda r: (_two_classes(r), os.makedirs(f'{r}/c3/sub')),
                    r'class folder\(s\) hold no image: .*c3. Add images'),
    'too few images': (lambda r: (_two_classes(r), fx.write_class(r, 'small', 4),
                                  fx.write_class(r, 'tiny', 1)),
                       r'2 classes have fewer than --min_images_per_class=10 images.*small \(4\), '
                       r'tiny \(1\).*at most K \+ Q = 1 images per class, which no task can'),
    'class in two splits': (lambda r: fx.write_tree(r, {'train': ['x', 'y'], 'test': ['y']}),
                            r"Class 'y' is in both train/ and test/"),
    'no image at all': (lambda r: os.makedirs(r), 'holds no image and no class folder'),
    'images but no class folders': (lambda r: fx.save(f'{r}/a.jpg', fx.pattern('a', 0)),
                                    'holds 1 images but no class folders'),
    'split folder with no classes': (
        lambda r: (fx.write_tree(r, {'train': ['x', 'y'], 'test': ['z']}), os.makedirs(f'{r}/val')),
        r'Split folder .*val holds no class folders'),
    'split and other folders': (
        lambda r: (fx.write_tree(r, {'train': ['x'], 'test': ['z']}), fx.write_class(r, 'extra')),
        r'mixes split folders \(test, train\) with other folders \(extra\)'),
    'no test folder': (lambda r: fx.write_tree(r, {'train': ['x', 'y'], 'val': ['z']}),
                       r'has train and val/ but no test/ folder'),
    'one class folder': (lambda r: fx.write_class(r, 'only'),
                         r'a single class folder \(only\).*--source=.*only'),
    'not a folder': (lambda r: None, 'is not a folder'),
}


@pytest.mark.parametrize('case', sorted(BAD_TREES))
def test_bad_tree_is_refused_before_anything_is_written(tmp_path, case):
  make, message = BAD_TREES[case]
  root = str(tmp_path / 'src')
  make(root)
  out = tmp_path / 'data'
  with pytest.raises(DataError, match=message):
    image_folders.prepare(root, str(out), 16)
  assert _nothing_written(out)


def test_unreadable_images_are_listed_then_skipped_on_request(tmp_path):
  root = _two_classes(str(tmp_path / 'src'), count=11)
  good = os.path.join(root, 'c1', 'c1_000.png')
  with open(good, 'rb') as f:
    data = f.read()
  with open(os.path.join(root, 'c1', 'truncated.png'), 'wb') as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(root, 'c2', 'fake.jpg'), 'wb') as f:
    f.write(b'<html>not a jpeg</html>')
  out = tmp_path / 'data'
  with pytest.raises(DataError, match=r'2 images could not be decoded: .*truncated.png.*fake.jpg'
                                      r'.*--skip_unreadable'):
    image_folders.prepare(root, str(out), 16)
  assert _nothing_written(out)
  path = image_folders.prepare(root, str(out), 16, skip_unreadable=True)
  meta = prepared_lib.read_metadata(path)
  assert meta['class_counts'] == {'images': [11, 11]} and meta['unreadable_left_out'] == 2
  # Losing unreadable images can leave a class short: checked again after decoding.
  with pytest.raises(DataError, match=r'fewer than --min_images_per_class=12.*c1 \(11\)'):
    image_folders.prepare(root, str(tmp_path / 'other'), 16, skip_unreadable=True,
                          min_images=12)


@pytest.mark.parametrize('name,message', [
    ('My-Data', "not a valid TFDS dataset name.*e.g. my_data"),
    ('mnist', 'a dataset TFDS .* already defines.*--name=mnist_folders'),
    ('mini_imagenet', 'already defines'),
])
def test_bad_names(tmp_path, name, message):
  root = _two_classes(str(tmp_path / 'src'))
  with pytest.raises(DataError, match=message):
    image_folders.prepare(root, str(tmp_path / 'data'), 16, name=name)


def test_default_name_from_the_folder():
  assert image_folders.default_name('/x/My Flowers-2/') == 'my_flowers_2'
  assert image_folders.default_name('/x/2024 photos') == 'images_2024_photos'


def test_a_tree_too_large_for_memory_is_refused_first(tmp_path, monkeypatch):
  root = _two_classes(str(tmp_path / 'src'))
  monkeypatch.setattr(image_folders, 'host_available_bytes', lambda: 10 * 16 * 16 * 3)
  with pytest.raises(DataError, match='24 images at 16 px need .* smaller --image_size'):
    image_folders.prepare(root, str(tmp_path / 'data'), 16)
  assert _nothing_written(tmp_path / 'data')


def test_same_tree_again_is_a_noop_a_changed_one_needs_overwrite(tmp_path):
  root = _two_classes(str(tmp_path / 'src'))
  out = str(tmp_path / 'data')
  path = image_folders.prepare(root, out, 16)
  stamp = os.path.getmtime(os.path.join(path, 'dataset_info.json'))
  assert image_folders.prepare(root, out, 16) == path
  assert os.path.getmtime(os.path.join(path, 'dataset_info.json')) == stamp
  fx.write_class(root, 'c3')
  with pytest.raises(DataError, match='already holds a different dataset.*--overwrite'):
    image_folders.prepare(root, out, 16)
  image_folders.prepare(root, out, 16, overwrite=True)
  assert prepared_lib.read_metadata(path)['class_counts'] == {'images': [12, 12, 12]}


def test_interrupted_conversion_leaves_nothing_and_the_next_one_finishes(tmp_path, monkeypatch):
  root = _two_classes(str(tmp_path / 'src'))
  out = tmp_path / 'data'
  calls, real = [], image_ops.encode

  def failing_encode(image, encoding):
    calls.append(1)
    if len(calls) > 10:
      raise KeyboardInterrupt
    return real(image, encoding)

  monkeypatch.setattr(image_ops, 'encode', failing_encode)
  with pytest.raises(KeyboardInterrupt):
    image_folders.prepare(root, str(out), 16)
  assert _nothing_written(out) and not [p for p in os.listdir(out) if p.startswith('.prepare')]
  monkeypatch.setattr(image_ops, 'encode', real)
  path = image_folders.prepare(root, str(out), 16)
  assert prepared_lib.read_metadata(path)['class_counts'] == {'images': [12, 12]}


def test_class_split_is_validated():
  config = load_config('tiny')
  with config.unlocked():
    config.data.tfds.class_split = 'everything'
  with pytest.raises(ConfigError, match="class_split='everything'.*auto, proportions, all_test"):
    validation.validate(config)


# --- entry points ------------------------------------------------------------------------------

def _run(args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=900)


def test_prepare_cli_detects_class_folders(tmp_path):
  root = _two_classes(str(tmp_path / 'Pets'))
  out = tmp_path / 'data'
  result = _run(['autoaug_jax.data.prepare', f'--source={root}', f'--out={out}',
                 '--image_size=16'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith(os.path.join('pets', '1.0.0'))
  assert '--config.data.tfds.name=pets' in result.stderr
  fx.write_class(root, 'short', 3)
  result = _run(['autoaug_jax.data.prepare', f'--source={root}', f'--out={tmp_path / "o2"}'])
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'short (3)' in result.stderr
  # MiniImagenet split files win the detection; --name is for class folders only.
  src = fx.write_tree(str(tmp_path / 'mi'), ['x', 'y'])
  open(os.path.join(src, 'mini-imagenet-cache-train.pkl'), 'wb').close()
  result = _run(['autoaug_jax.data.prepare', f'--source={src}', f'--out={tmp_path / "o3"}',
                 '--name=mine'])
  assert result.returncode != 0 and 'holds MiniImagenet split files' in result.stderr


@pytest.mark.slow
def test_train_on_a_folder_dataset_then_evaluate_on_another(tmp_path):
  """The issue's two commands end to end: prepare + train from class folders, then a
  cross-domain evaluation on every class of another tree, whose report names both."""
  train_root = fx.write_tree(str(tmp_path / 'zoo'), fx.SPLIT_CLASSES)
  other_root = fx.write_tree(str(tmp_path / 'fruit'))
  out = tmp_path / 'data'
  for root in (train_root, other_root):
    result = _run(['autoaug_jax.data.prepare', f'--source={root}', f'--out={out}',
                   '--image_size=24', '--min_images_per_class=4'])
    assert result.returncode == 0, result.stderr[-2000:]
  workdir = tmp_path / 'run'
  result = _run(['autoaug_jax.main', '--config=configs/tiny.py', f'--workdir={workdir}',
                 '--config.data.name=tfds', '--config.data.tfds.name=zoo',
                 f'--config.data.dir={out}', '--config.eval.val_every=0',
                 '--config.num_meta_steps=2'])
  assert result.returncode == 0, result.stderr[-3000:]
  report = (workdir / 'report.md').read_text()
  assert f'tfds zoo in {out} (class_split auto) (meta-test classes: 3)' in report
  result = _run(['autoaug_jax.evaluate', f'--workdir={workdir}', '--config.data.tfds.name=fruit',
                 '--config.data.tfds.class_split=all_test'])
  assert result.returncode == 0, result.stderr[-3000:]
  reports = [p for p in workdir.glob('eval_*/report.md')]
  assert len(reports) == 1
  report = reports[0].read_text()
  assert f'augmenter trained on**: tfds zoo in {out} (class_split auto)' in report
  assert f'evaluated on**: tfds fruit in {out} (class_split all_test) (meta-test classes: 5)' \
      in report
