"""The ResNet-50 encoder-decoder augmenter (paper Section 4.1, items 2 and 3).

The encoder is a ResNet trunk without its classification head (ImageNet
weights from a local Hugging Face directory, or random initialisation), its
final feature map [n, S/32, S/32, 2048] gets Gaussian noise, and seven
transposed convolutions decode it back to an image in [0, 1].

Decoder schedule (the paper gives kernel sizes growing 3 -> 5 -> 7 and strides
falling 3 -> 2 -> 1 but no exact sizes): kernels (3, 3, 5, 5, 5, 7, 7),
strides (2, 2, 2, 2, 2, 1, 1), 'SAME' padding, so the map grows by exactly
32 = the trunk's total stride; widths 512, 256, 128, 64, 32, 16, then 3.
An image size that is a multiple of 32 (the paper's 128) is reproduced
exactly; otherwise the trunk's map is ceil(S/32) wide and the decoded
32 * ceil(S/32) image is resized (antialiased) to S.

`frozen=True` trains only the decoder (item 2); `frozen=False` trains the
trunk too (item 3). BatchNorm uses the stored running statistics in both
cases (they are never updated; its scale and bias train with the trunk), so
the augmenter is a pure function of its parameters.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoaug_jax import layers
from autoaug_jax.augmenters.base import ImageAugmenter
from autoaug_jax.pretrained import resnet
from autoaug_jax.types import Params, float_dtype

KERNELS = (3, 3, 5, 5, 5, 7, 7)
STRIDES = (2, 2, 2, 2, 2, 1, 1)
WIDTHS = (512, 256, 128, 64, 32, 16, 3)


class Decoder(nn.Module):
  """Seven transposed convolutions: [n, h, w, C] -> [n, 32 h, 32 w, 3] in [0, 1].

  Parameters as `nn.ConvTranspose`'s (layers.ConvTranspose); `impl` 'patches'
  is the sub-pixel matmul form for CPUs, 'native' lax.conv_transpose.
  """
  widths: tuple[int, ...] = WIDTHS
  impl: str = 'patches'

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    for i, (width, k, s) in enumerate(zip(self.widths, KERNELS, STRIDES, strict=True)):
      z = layers.ConvTranspose(width, k, s, impl=self.impl, name=f'deconv{i}')(z)
      if i < len(self.widths) - 1:
        z = nn.relu(z)
    return nn.sigmoid(z)


@dataclasses.dataclass(frozen=True)
class ResNetAugmenter(ImageAugmenter):
  """Pre-trained (or random) ResNet trunk + noise + transposed-conv decoder."""
  arch: resnet.Architecture
  weights: str = ''  # local HF directory; '' = random init
  factor: int = 1
  frozen: bool = True
  noise_std: float = 0.1
  mean: tuple[float, float, float] = resnet.IMAGENET_MEAN
  std: tuple[float, float, float] = resnet.IMAGENET_STD
  conv_impl: str = 'patches'  # the trunk's convolutions
  decoder_impl: str = 'patches'  # the decoder's transposed convolutions (sub-pixel or native)
  config_overrides: tuple = ()  # (key, value) pairs for a random-init trunk (tests)

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    dtype = float_dtype()
    trunk_key, decoder_key = jax.random.split(key)
    seed = int(jax.random.randint(trunk_key, (), 0, 2**31 - 1))
    loaded = resnet.load(self.weights, seed=seed, config_overrides=dict(self.config_overrides),
                         expected=self.arch)
    side = -(-image_shape[0] // 32)
    dummy = jnp.zeros((1, side, side, self.arch.out_channels), dtype)
    decoder = Decoder().init(decoder_key, dummy)['params']
    cast = lambda tree: jax.tree.map(lambda p: jnp.asarray(p, dtype), tree)  # noqa: E731
    return {'trunk': cast(loaded.variables), 'decoder': cast(decoder)}

  def encode(self, params: Params, images: jax.Array) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> trunk features [n, ceil(H/32), ceil(W/32), C]."""
    x = resnet.normalise(self.mean, self.std, images)
    trunk = params['trunk']
    # Frozen leaves get no update anyway; stopping their gradient lets XLA drop
    # the trunk's whole backward pass (its input, the support set, is data).
    trunk = {'params': jax.lax.stop_gradient(trunk['params']) if self.frozen else trunk['params'],
             'batch_stats': jax.lax.stop_gradient(trunk['batch_stats'])}
    return resnet.apply(self.arch, trunk, x, impl=self.conv_impl)

  def synthesize(self, params: Params, images: jax.Array, key: jax.Array) -> jax.Array:
    z = self.encode(params, images)
    size = images.shape[1:3]

    def one_copy(key):
      noisy = z + self.noise_std * jax.random.normal(key, z.shape, z.dtype)
      out = Decoder(impl=self.decoder_impl).apply({'params': params['decoder']}, noisy)
      if out.shape[1:3] != size:
        out = jax.image.resize(out, (out.shape[0], *size, 3), 'linear', antialias=True)
      return out

    return jax.vmap(one_copy)(jax.random.split(key, self.factor))

  def trainable_mask(self, params: Params):
    """Decoder always; trunk weights unless frozen; BatchNorm running statistics never."""
    trunk = {'params': jax.tree.map(lambda _: not self.frozen, params['trunk']['params']),
             'batch_stats': jax.tree.map(lambda _: False, params['trunk']['batch_stats'])}
    return {'trunk': trunk, 'decoder': jax.tree.map(lambda _: True, params['decoder'])}
