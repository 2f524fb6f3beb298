"""Parameter-free baselines of the paper's Section 4.1: none, duplicate, fixed.

- `none`: S' is empty, the classifier trains on S alone (the reference every
  delta is measured against).
- `duplicate`: S' is F exact copies of S.
- `fixed`: F hand-designed random transformations of each image: horizontal
  flip (dm-pix), crop-and-resize of a random box, Gaussian pixel noise.
"""

from __future__ import annotations

import dataclasses

import dm_pix as pix
import jax
import jax.numpy as jnp

from autoaug_jax.augmenters.base import Augmenter, ImageAugmenter
from autoaug_jax.types import Params


@dataclasses.dataclass(frozen=True)
class NoAugmentation(Augmenter):
  factor: int = 1
  frozen: bool = True

  def augment(self, params: Params, images: jax.Array, labels: jax.Array, key: jax.Array,
              consts: Params = None) -> tuple[jax.Array, jax.Array]:
    """S' is empty: [0, H, W, 3] and [0]."""
    del params, key, consts
    return images[:0], labels[:0]


@dataclasses.dataclass(frozen=True)
class Duplicate(ImageAugmenter):
  factor: int = 1
  frozen: bool = True

  def synthesize(self, params: Params, images: jax.Array, key: jax.Array) -> jax.Array:
    del params, key
    return jnp.broadcast_to(images[None], (self.factor, *images.shape))


def _crop_and_resize(image: jax.Array, key: jax.Array, min_crop: float) -> jax.Array:
  """A random square box of side in [min_crop, 1] of the image, resized back."""
  h, w, _ = image.shape
  k_size, k_pos = jax.random.split(key)
  side = jax.random.uniform(k_size, (), minval=min_crop, maxval=1.0)
  offset = jax.random.uniform(k_pos, (2,)) * (1.0 - side)  # box corner, fraction of size
  scale = jnp.array([1.0 / side, 1.0 / side])
  translation = -offset * jnp.array([h, w]) * scale
  return jax.image.scale_and_translate(image, image.shape, (0, 1), scale, translation,
                                       method='linear', antialias=True)


@dataclasses.dataclass(frozen=True)
class FixedAugmentation(ImageAugmenter):
  factor: int = 1
  flip: bool = True
  min_crop: float = 0.7
  noise_std: float = 0.05
  frozen: bool = True

  def _one(self, image: jax.Array, key: jax.Array) -> jax.Array:
    k_flip, k_crop, k_noise = jax.random.split(key, 3)
    if self.flip:
      image = pix.random_flip_left_right(k_flip, image)
    if self.min_crop < 1.0:
      image = _crop_and_resize(image, k_crop, self.min_crop)
    if self.noise_std > 0:
      image = image + self.noise_std * jax.random.normal(k_noise, image.shape)
    return jnp.clip(image, 0.0, 1.0)

  def synthesize(self, params: Params, images: jax.Array, key: jax.Array) -> jax.Array:
    del params
    keys = jax.random.split(key, (self.factor, images.shape[0]))
    return jax.vmap(jax.vmap(self._one))(jnp.broadcast_to(images, (self.factor, *images.shape)),
                                         keys)
