"""The one interface every augmenter implements (learned, fixed, random, diffusion).

Data flow: task sampler -> augmenter (this package) -> classifier/inner loop.
An augmenter maps a support set S to a synthetic set S' (`augment`); the
inner loop trains on S together with S'. Most make F synthetic images per
support image (`ImageAugmenter.synthesize`; F = `factor`, the paper's
augmentation factor, Section 4.4); the diffusion augmenter makes F per
class. Everything is a pure function of `(params, images, labels, key)`, so
the meta-gradient can flow from the query loss back into `params`.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

from autoaug_jax.types import Params


class Augmenter(abc.ABC):
  """Base class; subclasses are frozen dataclasses (hashable, static under jit).

  Subclasses define `factor`, `frozen` and `augment` (or, per image, derive
  from `ImageAugmenter` and define `synthesize`), and `init` if they have
  parameters; `constants` if they use frozen weights that are passed to
  compiled code as an argument rather than trained (Stable Diffusion).
  """
  factor: int
  frozen: bool
  # S'[i] is made from S[i % n] (False: the diffusion augmenter, per class).
  paired = True

  def constants(self, seed: int) -> Params:
    """Frozen host arrays the augmenter reads (`consts` of `augment`); {} if none."""
    del seed
    return {}

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    """Parameters for images of `image_shape` (H, W, 3); {} if parameter-free."""
    del key, image_shape
    return {}

  @abc.abstractmethod
  def augment(self, params: Params, images: jax.Array, labels: jax.Array,
              key: jax.Array, consts: Params = None) -> tuple[jax.Array, jax.Array]:
    """Synthetic set S' for support set S.

    Args:
      params: this augmenter's parameters.
      images: [n, H, W, 3] float32 in [0, 1], class-major.
      labels: [n] int32.
      key: PRNG key (noise, random transformations).
      consts: `constants(seed)` placed on the devices.

    Returns:
      images [m, H, W, 3] in [0, 1] and labels [m] (m = factor * n for a paired
      augmenter, 0 for the no-augmentation baseline).
    """

  def synthetic_weight(self, params: Params) -> jax.Array | None:
    """Weight of each synthetic image relative to a real one in the inner loss; None:
    the same (the paper's plain mean over S u S'). See `weighted.SyntheticWeighted`."""
    del params
    return None

  def trainable_mask(self, params: Params) -> Any:
    """Pytree of bools like `params`: which leaves the outer optimiser updates."""
    return jax.tree.map(lambda _: not self.frozen, params)

  def has_trainable_params(self, params: Params) -> bool:
    return any(jax.tree.leaves(self.trainable_mask(params)))


class ImageAugmenter(Augmenter):
  """An augmenter that maps each support image to `factor` synthetic ones, S'[i] from
  S[i % n], with the image's label; subclasses define `synthesize`."""

  @abc.abstractmethod
  def synthesize(self, params: Params, images: jax.Array, key: jax.Array) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> synthetic [factor, n, H, W, 3] in [0, 1]."""

  def augment(self, params: Params, images: jax.Array, labels: jax.Array,
              key: jax.Array, consts: Params = None) -> tuple[jax.Array, jax.Array]:
    """`factor` synthetic images per support image (see `Augmenter.augment`); no consts."""
    del consts
    synthetic = self.synthesize(params, images, key)
    f = synthetic.shape[0]
    return synthetic.reshape(f * images.shape[0], *images.shape[1:]), jnp.tile(labels, f)
