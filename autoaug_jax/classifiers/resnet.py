"""A pre-trained ResNet-50 classifier with its top blocks tuned (Section 4.6)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autoaug_jax.pretrained import resnet
from autoaug_jax.types import Params, float_dtype


class Head(nn.Module):
  """Global average pool, then fully connected layers to N classes (Section 4.6)."""
  num_classes: int
  hidden: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.mean(axis=(1, 2))
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class ResNetClassifier:
  """Pre-trained ResNet-50 with only its top `trainable_blocks` blocks and a new head tuned.

  The bottom (stem and blocks 0 .. B - T - 1 of B bottleneck blocks) is frozen
  and runs in `embed`, once per task. The inner SGD trains the top T blocks,
  copied from the pre-trained weights for every task, and a freshly
  initialised head. BatchNorm in every block, trained or not, uses the
  pre-trained running statistics: they sit in the trained parameters behind
  `stop_gradient`, so SGD leaves them exactly unchanged and no mutable state
  leaves the pure step. Batch statistics of a 15-image support set would be
  noisy, would make a support image's features depend on the others, and
  would differ between training (S u S') and scoring (Q).
  """
  num_classes: int
  arch: resnet.Architecture
  weights: str = ''  # local HF directory; '' = random init
  trainable_blocks: int = 3
  hidden: int = 64
  embed_once: bool = True
  mean: tuple[float, float, float] = resnet.IMAGENET_MEAN
  std: tuple[float, float, float] = resnet.IMAGENET_STD
  conv_impl: str = 'patches'

  @property
  def first_trained_block(self) -> int:
    return self.arch.num_blocks - self.trainable_blocks

  def _check(self, consts: Params) -> None:
    if not consts:
      raise ValueError('ResNetClassifier needs its pre-trained weights: pass '
                       'MetaSetup.placed_constants(mesh).classifier '
                       '(classifier.constants(seed) on the devices) as consts.')

  @property
  def head(self) -> Head:
    return Head(self.num_classes, self.hidden)

  def constants(self, seed: int) -> Params:
    """The pre-trained variables {'params', 'batch_stats'}, host arrays."""
    dtype = np.dtype(float_dtype())
    loaded = resnet.load(self.weights, seed=seed, expected=self.arch)
    return jax.tree.map(lambda p: np.asarray(p, dtype), loaded.variables)

  def init(self, key: jax.Array, image_shape: tuple[int, int, int], consts: Params) -> Params:
    """{'blocks': the top blocks' pre-trained variables, 'head': fresh} (+ 'bottom' when
    embed_once=False)."""
    del image_shape
    self._check(consts)
    dtype = float_dtype()
    head = self.head.init(key, jnp.zeros((1, 1, 1, self.arch.out_channels), dtype))['params']
    params = {'blocks': resnet.block_variables(self.arch, consts, self.first_trained_block),
              'head': jax.tree.map(lambda p: p.astype(dtype), head)}
    if not self.embed_once:
      params['bottom'] = resnet.block_variables(self.arch, consts, -1, self.first_trained_block)
    return params

  def embed(self, consts: Params, images: jax.Array) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> output of the frozen bottom [n, h, w, C]
    (normalised images [n, H, W, 3] when embed_once=False)."""
    self._check(consts)
    x = resnet.normalise(self.mean, self.std, images)
    if not self.embed_once:
      return x
    end = self.first_trained_block
    frozen = jax.lax.stop_gradient(resnet.block_variables(self.arch, consts, -1, end))
    return resnet.apply(self.arch, frozen, x, -1, end, impl=self.conv_impl)

  def logits(self, params: Params, features: jax.Array) -> jax.Array:
    """features from `embed` -> logits [n, num_classes]."""
    x = features
    if not self.embed_once:
      x = resnet.apply(self.arch, jax.lax.stop_gradient(params['bottom']), x, -1,
                       self.first_trained_block, impl=self.conv_impl)
    blocks = {'params': params['blocks']['params'],
              'batch_stats': jax.lax.stop_gradient(params['blocks']['batch_stats'])}
    x = resnet.apply(self.arch, blocks, x, self.first_trained_block, impl=self.conv_impl)
    return self.head.apply({'params': params['head']}, x)

  def describe(self) -> str:
    return (f'resnet50, top {self.trainable_blocks} of {self.arch.num_blocks} blocks + head '
            f'tuned, weights: {self.weights or "random initialisation"}')
