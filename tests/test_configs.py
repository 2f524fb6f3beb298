"""Every config file: loads, is locked, validates, and documents its own command line."""

import pathlib

import pytest
from conftest import REPO, load_config

from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate
from autoaug_jax.errors import ConfigError

CONFIGS = sorted(p.stem for p in (REPO / 'configs').glob('*.py'))


def test_all_expected_configs_exist():
  assert {'default', 'paper', 'tiny'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_locked_valid_and_documented(name):
  config = load_config(name)
  if name == 'diffusion':  # needs a local SD directory (validated on a tiny one in test_diffusion)
    with pytest.raises(ConfigError, match='needs augmenter.sd_dir'):
      validate(config)
  else:
    validate(config)
  assert config.is_locked
  with pytest.raises(AttributeError):
    config.no_such_key = 1
  text = pathlib.Path(REPO / 'configs' / f'{name}.py').read_text()
  assert f'python -m autoaug_jax.main --config=configs/{name}.py --workdir=' in text


def test_paper_config_matches_section_4_1():
  c = load_config('paper')
  assert (c.task.n_way, c.task.k_shot, c.task.q_query) == (3, 5, 5)
  assert (c.inner.steps, c.meta_batch_size, c.num_meta_steps, c.image_size) == (20, 4, 500, 128)
  assert c.augmenter.noise_std ** 2 == pytest.approx(0.01)
  assert c.eval.num_tasks == 100


def test_spurious_config_is_the_committed_study_run_and_explains_itself():
  """configs/spurious.py claims the results of experiments/spurious/s05/seed0: it must
  be that run's config (the committed config.json), bar the report's note."""
  import json

  from autoaug_jax.run import workdir
  c = load_config('spurious')
  saved = workdir.read_saved_config(str(REPO / 'experiments' / 'spurious' / 's05' / 'seed0'))
  ours = workdir.flatten(json.loads(c.to_json()))
  assert {k for k in ours if ours[k] != saved[k]} == {'eval.report_note'}
  assert c.data.spurious == 0.5 and 'spurious' in c.eval.report_note


def test_combinations_cover_both_classifiers_and_four_augmenters():
  from autoaug_jax.config.schema import config_from_file
  path = REPO / 'configs' / 'combinations.py'
  seen = set()
  for clf in ('convnet', 'resnet50'):
    for aug, (name, frozen) in {'convnet': ('convnet', False),
                                'resnet50_frozen': ('resnet50', True),
                                'resnet50': ('resnet50', False),
                                'random_convnet': ('random_convnet', True)}.items():
      c = config_from_file(path, f'{clf},{aug}')
      validate(c)
      assert c.is_locked and c.image_size == 128 and c.data.name == 'mini_imagenet'
      assert (c.classifier.name, c.augmenter.name, c.augmenter.frozen) == (clf, name, frozen)
      seen.add((clf, aug))
  assert len(seen) == 8
  c = load_config('resnet_augmenter')
  assert (c.classifier.name, c.augmenter.name, c.augmenter.frozen) == ('convnet', 'resnet50', True)
  with pytest.raises(ConfigError, match=r'expected CLASSIFIER,AUGMENTER .* e\.g\. '):
    config_from_file(path, 'resnet50,resnet51')


@pytest.mark.parametrize('key, value, message', [
    ('inner.lr', float('inf'), r'inner.lr=inf must be a finite positive number'),
    ('outer.lr', float('nan'), r'outer.lr=nan must be a finite positive number'),
    ('eval.adapt_lr', 0.0, r'eval.adapt_lr=0.0 must be a finite positive number'),
    ('outer.grad_clip', -1.0, r'outer.grad_clip=-1.0 must be a finite number >= 0'),
    ('classifier.widths', (18, 0, 72), r'classifier.widths=\(18, 0, 72\) must be one or more '
                                       'positive integers'),
    ('augmenter.latent_channels', 0, r'augmenter.latent_channels=0 must be a positive integer'),
    ('seed', True, r'seed=True must be an integer in \[0, 2\*\*31\)'),
    ('eval.task_seed', -1, r'eval.task_seed=-1 must be an integer'),
    ('augmenter.noise_std', float('nan'), r'augmenter.noise_std=nan must be a finite number'),
])
def test_bad_values_get_one_line_naming_key_and_fix(key, value, message):
  config = load_config('tiny')
  config.unlock()
  config.update_from_flattened_dict({key: value})
  with pytest.raises(ConfigError, match=message) as e:
    validate(config)
  assert '\n' not in str(e.value)


def test_conv_impl_choices_and_what_auto_resolves_to(monkeypatch):
  config = load_config('tiny')
  config.classifier.conv_impl = 'native_vjp'
  validate(config)  # the convnet's
  config.augmenter.conv_impl = 'native_vjp'
  with pytest.raises(ConfigError, match=r"augmenter.conv_impl='native_vjp': choose 'auto', "):
    validate(config)
  config = load_config('tiny')
  config.classifier.name, config.classifier.conv_impl = 'resnet50', 'native_vjp'
  with pytest.raises(ConfigError, match=r"'native_vjp' is the convnet classifier's; for "
                                        r"classifier.name='resnet50' choose"):
    validate(config)
  config = load_config('tiny')
  monkeypatch.setattr(builders, 'platform', lambda: 'cpu')
  assert builders.classifier_conv_impl(config) == 'native_vjp'  # task_chunk 'auto': 1
  config.task_chunk = 0  # one vmap over tasks: its convolutions would be grouped
  assert builders.classifier_conv_impl(config) == 'patches'
  config.task_chunk, config.classifier.name = 1, 'resnet50'
  assert builders.classifier_conv_impl(config) == 'patches'
  config.classifier.name = 'convnet'
  monkeypatch.setattr(builders, 'platform', lambda: 'gpu')
  assert builders.classifier_conv_impl(config) == 'patches'
  monkeypatch.setattr(builders, 'platform', lambda: 'tpu')
  assert builders.classifier_conv_impl(config) == 'native'
