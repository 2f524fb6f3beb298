"""Classifiers trained inside the inner loop, behind one interface.

Data flow: augmenter -> classifier (this module) -> inner loop. A classifier
has four parts, all pure but the loading in `constants`:

- `constants(seed)`: host arrays that never change during a run (a
  pre-trained network's weights; `{}` for the ConvNet). The orchestrator places
  them on the devices once and passes them to every compiled step as an
  argument: closed over instead, XLA would bake 100 MB of ResNet-50 weights
  into each executable.
- `init(key, image_shape, consts)`: the parameters the inner SGD trains, fresh
  for every task.
- `embed(consts, images)`: the part that stays fixed during the inner loop,
  run once per task on S, S' and Q outside the scan, differentiably (the
  meta-gradient reaches S' through it).
- `logits(params, features)`: the part every inner step runs.

(`describe()` names the classifier in reports.) The paper's ConvNet
(Section 4.1) trains everything, so its `embed` only
rescales pixels. The pre-trained ResNet-50 (Section 4.6) puts its frozen
bottom in `embed`, so twenty inner steps cost twenty passes through the top
blocks and the head only (`embed_once=False` runs the whole network in every
step instead, for the benchmark's comparison).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from autoaug_jax import resnet
from autoaug_jax.layers import Conv3x3, max_pool_2x2

Params = Any


class Classifier(Protocol):
  """What the inner loop, outer step and evaluation need of a classifier."""

  def constants(self, seed: int) -> Params: ...

  def init(self, key: jax.Array, image_shape: tuple[int, int, int], consts: Params) -> Params: ...

  def embed(self, consts: Params, images: jax.Array) -> jax.Array: ...

  def logits(self, params: Params, features: jax.Array) -> jax.Array: ...

  def describe(self) -> str: ...


def _float_dtype():
  return jnp.result_type(float)  # float64 under jax.enable_x64 (gradient checks)


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
    dtype = _float_dtype()
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
                       "MetaSetup.placed_constants(mesh)['classifier'] "
                       '(classifier.constants(seed) on the devices) as consts.')

  @property
  def head(self) -> Head:
    return Head(self.num_classes, self.hidden)

  def constants(self, seed: int) -> Params:
    """The pre-trained variables {'params', 'batch_stats'}, host arrays."""
    dtype = np.dtype(_float_dtype())
    loaded = resnet.load(self.weights, seed=seed, expected=self.arch)
    return jax.tree.map(lambda p: np.asarray(p, dtype), loaded.variables)

  def init(self, key: jax.Array, image_shape: tuple[int, int, int], consts: Params) -> Params:
    """{'blocks': the top blocks' pre-trained variables, 'head': fresh} (+ 'bottom' when
    embed_once=False)."""
    del image_shape
    self._check(consts)
    dtype = _float_dtype()
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


def _convnet(config, num_classes: int) -> ConvNetClassifier:
  c = config.classifier
  return ConvNetClassifier(num_classes, tuple(c.widths), c.hidden, c.conv_impl)


def _resnet50(config, num_classes: int) -> ResNetClassifier:
  c = config.classifier
  mean, std = resnet.normalisation(c.weights)
  return ResNetClassifier(num_classes, resnet.architecture(c.weights), weights=c.weights,
                          trainable_blocks=c.trainable_blocks, hidden=c.hidden,
                          embed_once=c.embed_once, mean=mean, std=std, conv_impl=c.conv_impl)


CLASSIFIERS = {
    'convnet': _convnet,
    'resnet50': _resnet50,
}


def make_classifier(config: ml_collections.ConfigDict) -> Classifier:
  """Builds `config.classifier.name` for `config.task.n_way` classes."""
  name = config.classifier.name
  if name not in CLASSIFIERS:
    raise ValueError(f'classifier.name={name!r} is unknown; choose one of {sorted(CLASSIFIERS)}.')
  return CLASSIFIERS[name](config, config.task.n_way)
