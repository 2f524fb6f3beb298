r"""Sections 4.5 and 4.6: every classifier x augmenter combination of the paper.

The paper's settings (configs/paper.py: MiniImagenet, 128x128, 3-way 5-shot
5-query, I = 20, meta-batch 4) with one of two classifiers and one of four
augmenters, chosen by the argument after the colon, CLASSIFIER,AUGMENTER:

  classifier  convnet          the paper's ConvNet, trained from scratch per task
              resnet50         pre-trained ResNet-50, top 3 blocks + FC head tuned
  augmenter   convnet          the learned ConvNet encoder-decoder
              resnet50_frozen  ResNet-50 trunk frozen, decoder learned
              resnet50         ResNet-50 trunk and decoder learned
              random_convnet   a frozen, randomly initialised ConvNet (nothing learned)

Without an argument: resnet50,convnet (Section 4.6). Every run also
evaluates the baselines none, duplicate, fixed and random_convnet on the same
test tasks. ImageNet weights come from local Hugging Face directories (e.g.
`microsoft/resnet-50` saved with save_pretrained); without them the ResNets
are randomly initialised and the report says so:

  python -m autoaug_jax.main --config=configs/combinations.py --workdir=runs/resclf_convaug \
      --config.classifier.weights=~/models/resnet-50
  python -m autoaug_jax.main --config=configs/combinations.py:resnet50,resnet50_frozen \
      --workdir=runs/resclf_resaug --config.classifier.weights=~/models/resnet-50 \
      --config.augmenter.weights=~/models/resnet-50
  python -m autoaug_jax.main --config=configs/combinations.py:convnet,resnet50 \
      --workdir=runs/convclf_resaug_unfrozen --config.augmenter.weights=~/models/resnet-50

Add --config.data.name=glyphs to run on the embedded dataset, and
--config.classifier.trainable_blocks=N to tune more or fewer blocks.
"""

import pathlib

from autoaug_jax.config.schema import config_from_file, lock
from autoaug_jax.errors import ConfigError

CLASSIFIERS = ('convnet', 'resnet50')
# augmenter choice -> (augmenter.name, augmenter.frozen)
AUGMENTERS = {
    'convnet': ('convnet', False),
    'resnet50_frozen': ('resnet50', True),
    'resnet50': ('resnet50', False),
    'random_convnet': ('random_convnet', True),
}


def get_config(arg: str = 'resnet50,convnet'):
  parts = [p.strip() for p in arg.split(',')]
  if len(parts) != 2 or parts[0] not in CLASSIFIERS or parts[1] not in AUGMENTERS:
    raise ConfigError(f'configs/combinations.py:{arg}: expected CLASSIFIER,AUGMENTER with '
                     f'CLASSIFIER in {CLASSIFIERS} and AUGMENTER in {tuple(AUGMENTERS)}, '
                     'e.g. configs/combinations.py:resnet50,resnet50_frozen.')
  classifier, augmenter = parts
  config = config_from_file(pathlib.Path(__file__).with_name('paper.py'))
  with config.unlocked():
    config.classifier.name = classifier
    config.augmenter.name, config.augmenter.frozen = AUGMENTERS[augmenter]
  return lock(config)
