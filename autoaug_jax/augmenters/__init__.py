"""Augmenter registry: `config.augmenter.name` -> constructor.

Every entry builds an `Augmenter` (see `base.py`) from the augmenter config
and the task's N, so new augmenters (ResNet-50 encoder-decoder, soft-prompted
diffusion) are added here without touching the inner or outer loop.
"""

from __future__ import annotations

from autoaug_jax.augmenters.base import Augmenter, Params
from autoaug_jax.augmenters.baselines import Duplicate, FixedAugmentation, NoAugmentation
from autoaug_jax.augmenters.convnet import ConvNetAugmenter
from autoaug_jax.augmenters.resnet import ResNetAugmenter


def _none(c, n_way) -> Augmenter:
  return NoAugmentation(factor=c.factor)


def _duplicate(c, n_way) -> Augmenter:
  return Duplicate(factor=c.factor)


def _fixed(c, n_way) -> Augmenter:
  return FixedAugmentation(factor=c.factor, flip=c.fixed.flip, min_crop=c.fixed.min_crop,
                           noise_std=c.fixed.noise_std)


def _convnet(c, n_way, frozen: bool | None = None) -> Augmenter:
  return ConvNetAugmenter(factor=c.factor, frozen=c.frozen if frozen is None else frozen,
                          noise_std=c.noise_std, latent_channels=c.latent_channels)


def _random_convnet(c, n_way) -> Augmenter:
  return _convnet(c, n_way, frozen=True)


def _resnet50(c, n_way) -> Augmenter:
  from autoaug_jax import resnet
  mean, std = resnet.normalisation(c.weights)
  return ResNetAugmenter(resnet.architecture(c.weights), weights=c.weights, factor=c.factor,
                         frozen=c.frozen, noise_std=c.noise_std, mean=mean, std=std,
                         conv_impl=c.conv_impl)


def _diffusion(c, n_way) -> Augmenter:
  from autoaug_jax.augmenters import diffusion  # imports diffusers: only when asked for
  return diffusion.build(c, n_way)


AUGMENTERS = {
    'none': _none,
    'duplicate': _duplicate,
    'fixed': _fixed,
    'convnet': _convnet,
    'random_convnet': _random_convnet,
    'resnet50': _resnet50,
    'diffusion': _diffusion,
}


def make_augmenter(augmenter_config, name: str | None = None, *, n_way: int = 0) -> Augmenter:
  """Builds the augmenter `name` (default `augmenter_config.name`) for N-way tasks
  (`n_way`: needed by augmenters that generate per class, i.e. diffusion)."""
  name = name or augmenter_config.name
  if name not in AUGMENTERS:
    raise ValueError(f'augmenter.name={name!r} is unknown; choose one of {sorted(AUGMENTERS)}.')
  return AUGMENTERS[name](augmenter_config, n_way)


__all__ = ['AUGMENTERS', 'Augmenter', 'Params', 'make_augmenter']
