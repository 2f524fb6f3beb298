"""The ConvNet encoder-decoder augmenter (paper Sections 3.2 and 4.1, item 1).

One strided convolution encodes each support image into a dense latent
(H/2 x W/2 x latent_channels), Gaussian noise is added to the latent, and one
transposed convolution decodes it back to an image in [0, 1]. Fresh noise per
copy gives F different synthetic images per support image. With
`frozen=True` it is the paper's "frozen randomly initialised ConvNet"
baseline; otherwise its parameters are meta-learned.

The augmenter's weights are shared by all tasks of a meta-batch, so native
convolutions stay ordinary (batched) convolutions under `vmap`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoaug_jax.augmenters.base import ImageAugmenter
from autoaug_jax.types import Params, float_dtype


class EncoderDecoder(nn.Module):
  latent_channels: int = 8

  @nn.compact
  def __call__(self, images: jax.Array, key: jax.Array, noise_std: float) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> [n, H, W, 3] in [0, 1]; H, W even."""
    z = nn.Conv(self.latent_channels, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                name='encoder')(images * 2.0 - 1.0)
    z = nn.relu(z)
    z = z + noise_std * jax.random.normal(key, z.shape, z.dtype)
    out = nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding='SAME', name='decoder')(z)
    return nn.sigmoid(out)


@dataclasses.dataclass(frozen=True)
class ConvNetAugmenter(ImageAugmenter):
  factor: int = 1
  frozen: bool = False
  noise_std: float = 0.1
  latent_channels: int = 8

  @property
  def module(self) -> EncoderDecoder:
    return EncoderDecoder(self.latent_channels)

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    dtype = float_dtype()
    dummy = jnp.zeros((1, *image_shape), dtype)
    params = self.module.init(key, dummy, jax.random.key(0), self.noise_std)['params']
    return jax.tree.map(lambda p: p.astype(dtype), params)

  def synthesize(self, params: Params, images: jax.Array, key: jax.Array) -> jax.Array:
    keys = jax.random.split(key, self.factor)

    def one_copy(key):
      return self.module.apply({'params': params}, images, key, self.noise_std)

    return jax.vmap(one_copy)(keys)
