"""Classifiers trained from scratch inside the inner loop, behind one interface.

Data flow: augmenter -> classifier (this module) -> inner loop. A classifier
is split into a part that stays fixed during the inner loop (`embed`, run once
per task on the support, synthetic and query images) and a part the inner
SGD steps train (`logits`). The paper's ConvNet (Section 4.1) trains
everything, so its `embed` only normalises pixels; a pre-trained ResNet-50
(Section 4.6) will put its frozen trunk in `embed`, so twenty inner steps cost
twenty passes through the top layers only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoaug_jax.layers import Conv3x3, max_pool_2x2

Params = Any


class ConvNet(nn.Module):
  """Section 4.1: three 3x3 convs (18/36/72) each with 2x2 max-pool, FC 64, FC N."""
  num_classes: int
  widths: tuple[int, ...] = (18, 36, 72)
  hidden: int = 64
  conv_impl: str = 'patches'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.widths:
      x = nn.relu(max_pool_2x2(Conv3x3(width, impl=self.conv_impl)(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class ConvNetClassifier:
  """The paper's small classifier, trained from a fresh random init per task."""
  num_classes: int
  widths: tuple[int, ...] = (18, 36, 72)
  hidden: int = 64
  conv_impl: str = 'patches'

  @property
  def module(self) -> ConvNet:
    return ConvNet(self.num_classes, tuple(self.widths), self.hidden, self.conv_impl)

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> tuple[Params, Params]:
    """Returns (trainable params, frozen params) for one task."""
    dtype = jnp.result_type(float)  # float64 under jax.enable_x64 (gradient checks)
    params = self.module.init(key, jnp.zeros((1, *image_shape), dtype))['params']
    return jax.tree.map(lambda p: p.astype(dtype), params), {}

  def embed(self, frozen: Params, images: jax.Array) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> inputs of the trained part, [n, H, W, 3] in [-1, 1]."""
    del frozen
    return images * 2.0 - 1.0

  def logits(self, params: Params, features: jax.Array) -> jax.Array:
    """features from `embed` -> logits [n, num_classes]."""
    return self.module.apply({'params': params}, features)


def _convnet(config, num_classes: int) -> ConvNetClassifier:
  c = config.classifier
  return ConvNetClassifier(num_classes, tuple(c.widths), c.hidden, c.conv_impl)


CLASSIFIERS = {
    'convnet': _convnet,
}


def make_classifier(config) -> ConvNetClassifier:
  """Builds `config.classifier.name` for `config.task.n_way` classes."""
  name = config.classifier.name
  if name not in CLASSIFIERS:
    raise ValueError(f'classifier.name={name!r} is unknown; choose one of {sorted(CLASSIFIERS)}.')
  return CLASSIFIERS[name](config, config.task.n_way)
