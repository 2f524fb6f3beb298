"""The paper's small ConvNet classifier (Section 4.1), trained from scratch in every task."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoaug_jax.layers import Conv3x3, max_pool_2x2
from autoaug_jax.types import Params, float_dtype


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
    if self.hidden:
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

  def constants(self, seed: int) -> Params:
    del seed
    return {}

  def init(self, key: jax.Array, image_shape: tuple[int, int, int], consts: Params) -> Params:
    """Fresh trainable parameters for one task."""
    del consts
    dtype = float_dtype()
    params = self.module.init(key, jnp.zeros((1, *image_shape), dtype))['params']
    return jax.tree.map(lambda p: p.astype(dtype), params)

  def embed(self, consts: Params, images: jax.Array) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> inputs of the trained part, [n, H, W, 3] in [-1, 1]."""
    del consts
    return images * 2.0 - 1.0

  def logits(self, params: Params, features: jax.Array) -> jax.Array:
    """features from `embed` -> logits [n, num_classes]."""
    return self.module.apply({'params': params}, features)

  def describe(self) -> str:
    return f'convnet {tuple(self.widths)}, FC {self.hidden}, trained from scratch per task'
