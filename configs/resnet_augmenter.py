r"""Section 4.5: the ResNet-50 encoder-decoder augmenter with the paper's ConvNet classifier.

Paper settings (configs/paper.py: MiniImagenet, 128x128, 3-way 5-shot
5-query, I = 20) with `augmenter.name=resnet50`. ImageNet weights come from a
local Hugging Face directory (e.g. `microsoft/resnet-50` saved with
save_pretrained on a machine with internet access); without one the trunk is
randomly initialised and the report says so. Frozen trunk (decoder trained):

  python -m autoaug_jax.main --config=configs/resnet_augmenter.py --workdir=runs/resnet_aug \
      --config.augmenter.weights=~/models/resnet-50

Add --config.augmenter.frozen=False to train the trunk too (Section 4.1,
item 3). The pre-trained ResNet classifier of Section 4.6 is not built yet.
"""

import importlib.util
import pathlib

from autoaug_jax.config_schema import lock


def _paper_config():
  """configs/paper.py's config (config files are loaded by path, not as a package)."""
  path = pathlib.Path(__file__).with_name('paper.py')
  spec = importlib.util.spec_from_file_location('autoaug_paper_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _paper_config()
  with config.unlocked():
    config.augmenter.name = 'resnet50'
    config.augmenter.frozen = True
  return lock(config)
