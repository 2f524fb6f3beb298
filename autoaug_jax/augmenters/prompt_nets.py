"""Soft-prompt networks: support images -> P soft tokens of the text encoder's width.

The paper's diffusion augmenter (Sections 3.3 and 4.7) conditions Stable
Diffusion on a per-class soft prompt: the mean over that class's support
images of a network's output, shaped like a P-word prompt embedding. Two
networks, as in the paper:

- `clip_vit`: a pre-trained CLIP vision transformer (transformers' Flax
  `FlaxCLIPVisionModel`, ViT-B/32 layout, from a local directory; trainable)
  whose pooled output is projected to P x D.
- `convnet`: four 3x3 convolutions with 2x2 max-pooling, global average
  pooling and the same projection.

Both project layer-normed features, and the projection starts at the scale of
CLIP's token embeddings (std 0.02), so the first soft prompts are
prompt-like rather than 50x too large.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoaug_jax.errors import WeightsError
from autoaug_jax.layers import Conv3x3, max_pool_2x2
from autoaug_jax.pretrained.huggingface import load_transformers, quiet
from autoaug_jax.types import Params, float_dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ViT-B/32 (openai/clip-vit-base-patch32), for random initialisation.
VIT_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, image_size=224, patch_size=32, hidden_act='quick_gelu')
TOKEN_SCALE = 0.02


def _projection(num_tokens: int, width: int) -> nn.Dense:
  def init(key, shape, dtype=jnp.float32):
    return TOKEN_SCALE / jnp.sqrt(shape[0]) * jax.random.normal(key, shape, dtype)
  return nn.Dense(num_tokens * width, kernel_init=init, name='projection')


class ConvPromptModule(nn.Module):
  """[n, H, W, 3] in [0, 1] -> [n, P * D]."""
  out_dim: int
  num_tokens: int
  widths: tuple[int, ...] = (64, 64, 64, 64)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x * 2.0 - 1.0
    for width in self.widths:
      x = nn.relu(Conv3x3(width)(x))
      if min(x.shape[1:3]) >= 2:
        x = max_pool_2x2(x)
    # Layer-normed like the ViT's pooled output, so the projection starts at token scale.
    x = nn.LayerNorm()(x.mean(axis=(1, 2)))
    return _projection(self.num_tokens, self.out_dim // self.num_tokens)(x)


@dataclasses.dataclass(frozen=True)
class ConvPromptNet:
  num_tokens: int
  width: int
  channels: int = 64

  @property
  def module(self) -> ConvPromptModule:
    return ConvPromptModule(self.num_tokens * self.width, self.num_tokens, (self.channels,) * 4)

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    params = self.module.init(key, jnp.zeros((1, *image_shape), float_dtype()))['params']
    return jax.tree.map(lambda p: p.astype(float_dtype()), params)

  def apply(self, params: Params, images: jax.Array) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> soft tokens [n, P, D] float32."""
    out = self.module.apply({'params': params}, images.astype(float_dtype()))
    return out.reshape(images.shape[0], self.num_tokens, self.width)

  def describe(self) -> str:
    return f'convnet prompt net (4 x {self.channels} channels)'


class _Projection(nn.Module):
  num_tokens: int
  width: int

  @nn.compact
  def __call__(self, x):
    return _projection(self.num_tokens, self.width)(x)


@dataclasses.dataclass(frozen=True)
class ClipVitPromptNet:
  """CLIP vision transformer (trainable) + projection; `weights=''` is a random ViT-B/32."""
  num_tokens: int
  width: int
  weights: str = ''

  @functools.cached_property
  def vision_config(self):
    quiet()
    from transformers import CLIPVisionConfig
    if self.weights:
      return CLIPVisionConfig.from_pretrained(self._path(), local_files_only=True)
    return CLIPVisionConfig(**VIT_B32)

  def _path(self) -> str:
    path = os.path.abspath(os.path.expanduser(self.weights))
    if not os.path.isfile(os.path.join(path, 'config.json')):
      raise WeightsError(
          f'augmenter.prompt_net.weights={self.weights!r}: no config.json in {path}. Give a '
          'local CLIP vision directory (save_pretrained output of FlaxCLIPVisionModel or '
          "CLIPModel, e.g. openai/clip-vit-base-patch32), or '' for a random ViT-B/32.")
    return path

  @property
  def module(self):
    from transformers.models.clip.modeling_flax_clip import FlaxCLIPVisionModule
    return FlaxCLIPVisionModule(self.vision_config, dtype=float_dtype())

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    del image_shape  # images are resized to the ViT's own size
    quiet()
    from transformers import FlaxCLIPVisionModel
    vit_key, proj_key = jax.random.split(key)
    if self.weights:
      _, vit = load_transformers(FlaxCLIPVisionModel, self._path())
    else:
      # Jitted: flax's eager init compiles every op on its own.
      model = FlaxCLIPVisionModel(self.vision_config, _do_init=False)
      size = self.vision_config.image_size
      vit = jax.jit(model.init_weights, static_argnums=1)(vit_key, (1, size, size, 3))
    proj = _Projection(self.num_tokens, self.width).init(
        proj_key, jnp.zeros((1, self.vision_config.hidden_size)))['params']
    cast = lambda tree: jax.tree.map(lambda p: jnp.asarray(p, float_dtype()), tree)  # noqa: E731
    return {'vit': cast(dict(vit)), 'projection': cast(proj)}

  def apply(self, params: Params, images: jax.Array) -> jax.Array:
    """images [n, H, W, 3] in [0, 1] -> soft tokens [n, P, D] float32."""
    size = self.vision_config.image_size
    x = images.astype(float_dtype())
    if x.shape[1:3] != (size, size):
      x = jax.image.resize(x, (x.shape[0], size, size, 3), 'linear', antialias=True)
    x = (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
    # The inner module takes NHWC (the wrapper's __call__ would transpose NCHW).
    pooled = self.module.apply({'params': params['vit']}, x).pooler_output
    out = _Projection(self.num_tokens, self.width).apply({'params': params['projection']}, pooled)
    return out.reshape(images.shape[0], self.num_tokens, self.width)

  def describe(self) -> str:
    return f'clip_vit prompt net ({self.weights or "random ViT-B/32"})'


def make_prompt_net(name: str, num_tokens: int, width: int, *, weights: str = '',
                    channels: int = 64):
  """`augmenter.prompt_net.name` -> prompt network."""
  if name == 'clip_vit':
    return ClipVitPromptNet(num_tokens, width, weights)
  if name == 'convnet':
    return ConvPromptNet(num_tokens, width, channels)
  raise ValueError(f"augmenter.prompt_net.name={name!r} is unknown; choose 'clip_vit' or "
                   "'convnet'.")
