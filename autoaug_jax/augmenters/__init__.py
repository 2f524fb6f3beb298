"""Augmenters: every one maps a support set S to synthetic images S' (`base.Augmenter`).

Model classes only: `config.builders` builds them from a config. The
ResNet and diffusion augmenters, which import Hugging Face libraries, are
imported by whoever uses them (`augmenters.resnet`, `augmenters.diffusion`).
"""

from autoaug_jax.augmenters.base import Augmenter, ImageAugmenter
from autoaug_jax.augmenters.baselines import Duplicate, FixedAugmentation, NoAugmentation
from autoaug_jax.augmenters.convnet import ConvNetAugmenter

__all__ = ['Augmenter', 'ConvNetAugmenter', 'Duplicate', 'FixedAugmentation', 'ImageAugmenter',
           'NoAugmentation']
