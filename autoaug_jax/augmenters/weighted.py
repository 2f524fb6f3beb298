"""A weight on the synthetic images' share of the inner loss, fixed or meta-learned.

Beyond the paper (issue 16): the inner loop minimises

    (sum over S of CE + w * sum over S' of CE) / (|S| + w * |S'|)

instead of the plain mean over S u S'. w = 1 is the paper's loss, w = 0
trains on S alone (the `none` baseline), so a meta-learned w lets
meta-training turn a harmful augmenter down, or off, instead of only
reshaping its images. Learned, w = sigmoid(theta) with theta a trainable
scalar beside the augmenter's parameters, initialised at logit(w0); its
gradient is part of the same exact meta-gradient (the query loss depends on
w only through the inner SGD steps).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from autoaug_jax.augmenters.base import Augmenter
from autoaug_jax.types import Params, float_dtype

WEIGHT_LOGIT = 'synthetic_weight_logit'


@dataclasses.dataclass(frozen=True)
class SyntheticWeighted(Augmenter):
  """`base` whose synthetic images weigh `weight` in the inner loss (learned: initially).

  Parameters: {'augmenter': base's, WEIGHT_LOGIT: [] float} when learned,
  {'augmenter': base's} when fixed. The logit is trained even if the base is
  frozen: a frozen random augmenter with a learned weight is a meaningful
  point (meta-training may only choose how much to trust it).
  """
  base: Augmenter
  weight: float
  learned: bool = False

  def __post_init__(self):
    if not 0.0 <= self.weight <= 1.0 or (self.learned and not 0.0 < self.weight < 1.0):
      raise ValueError(f'synthetic weight {self.weight} must be in [0, 1] (fixed) or (0, 1) '
                       '(learned, its initial value).')

  @property
  def factor(self) -> int:
    return self.base.factor

  @property
  def frozen(self) -> bool:
    return self.base.frozen and not self.learned

  @property
  def paired(self) -> bool:
    return self.base.paired

  def constants(self, seed: int) -> Params:
    return self.base.constants(seed)

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    params = {'augmenter': self.base.init(key, image_shape)}
    if self.learned:
      params[WEIGHT_LOGIT] = jnp.asarray(math.log(self.weight / (1.0 - self.weight)),
                                         float_dtype())
    return params

  def augment(self, params: Params, images: jax.Array, labels: jax.Array,
              key: jax.Array, consts: Params = None) -> tuple[jax.Array, jax.Array]:
    return self.base.augment(params['augmenter'], images, labels, key, consts)

  def synthetic_weight(self, params: Params) -> jax.Array:
    if self.learned:
      return jax.nn.sigmoid(params[WEIGHT_LOGIT])
    return jnp.asarray(self.weight, float_dtype())

  def trainable_mask(self, params: Params):
    mask = {'augmenter': self.base.trainable_mask(params['augmenter'])}
    if self.learned:
      mask[WEIGHT_LOGIT] = True
    return mask

  def describe(self) -> str:
    inner = self.base.describe() if hasattr(self.base, 'describe') else ''
    how = (f'learned from {self.weight:g}' if self.learned else f'{self.weight:g}')
    return f'{inner}{"; " if inner else ""}synthetic weight {how}'
