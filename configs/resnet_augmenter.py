r"""Section 4.5: the ResNet-50 encoder-decoder augmenter with the paper's ConvNet classifier.

Paper settings (configs/paper.py: MiniImagenet, 128x128, 3-way 5-shot
5-query, I = 20) with `augmenter.name=resnet50`. ImageNet weights come from a
local Hugging Face directory (e.g. `microsoft/resnet-50` saved with
save_pretrained on a machine with internet access); without one the trunk is
randomly initialised and the report says so. Frozen trunk (decoder trained):

  python -m autoaug_jax.main --config=configs/resnet_augmenter.py --workdir=runs/resnet_aug \
      --config.augmenter.weights=~/models/resnet-50

Add --config.augmenter.frozen=False to train the trunk too (Section 4.1,
item 3). The same as configs/combinations.py:convnet,resnet50_frozen; that
file has every classifier x augmenter combination, the pre-trained ResNet
classifier of Section 4.6 included.
"""

import pathlib

from autoaug_jax.config.schema import config_from_file


def get_config():
  return config_from_file(pathlib.Path(__file__).with_name('combinations.py'),
                          'convnet,resnet50_frozen')
