"""ResNet weights from Hugging Face (transformers' Flax ResNet) and a pure apply over block ranges.

Transformers is imported inside the loading functions only. `load` reads an ImageNet-pretrained
ResNet (e.g. a saved `microsoft/resnet-50`) from a local directory through
`FlaxResNetModel.from_pretrained` (PyTorch-only directories via `from_pt`,
which needs torch), or builds a randomly initialised one when no directory is
given. Nothing is ever downloaded.

`apply` runs the network on the HF parameter tree itself, from any block to
any other, so a caller can split it into a frozen bottom computed once and a
trained top (the pre-trained classifier of Section 4.6), or use the whole
trunk as an encoder (the ResNet augmenter of Section 4.1). Convolutions are
written as patches + matmul (`layers.conv2d`), which XLA:CPU runs several
times faster than native convolutions at these shapes and which stay plain
batched matmuls under `vmap`. BatchNorm always uses the stored running
statistics: no mutable state can leak out of a pure step, and a few-shot
batch is too small to estimate statistics from (the "BatchNorm in the inner
loop" complaint in peer trackers).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from autoaug_jax.errors import WeightsError
from autoaug_jax.layers import conv2d
from autoaug_jax.pretrained.huggingface import require_torch
from autoaug_jax.types import Params

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_EPS = 1e-5  # transformers' FlaxResNet BatchNorm epsilon


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The static shape of a ResNet with bottleneck blocks (hashable: a jit static)."""
  embedding_size: int
  hidden_sizes: tuple[int, ...]
  depths: tuple[int, ...]
  downsample_in_first_stage: bool = False
  reduction: int = 4

  @classmethod
  def from_hf(cls, config) -> Architecture:
    if config.layer_type != 'bottleneck':
      raise WeightsError(f'ResNet layer_type={config.layer_type!r}: only bottleneck ResNets '
                         '(ResNet-50/101/152) are supported.')
    if config.hidden_act != 'relu':
      raise WeightsError(f'ResNet hidden_act={config.hidden_act!r}: only relu is supported.')
    return cls(config.embedding_size, tuple(config.hidden_sizes), tuple(config.depths),
               bool(config.downsample_in_first_stage))

  def blocks(self) -> list[tuple[str, str, int, bool]]:
    """Per bottleneck block, in order: (stage, layer, stride, has_projection_shortcut)."""
    out, in_channels = [], self.embedding_size
    for s, (width, depth) in enumerate(zip(self.hidden_sizes, self.depths, strict=True)):
      first_stride = (2 if self.downsample_in_first_stage else 1) if s == 0 else 2
      for j in range(depth):
        stride = first_stride if j == 0 else 1
        out.append((str(s), str(j), stride, stride != 1 or in_channels != width))
        in_channels = width
    return out

  @property
  def num_blocks(self) -> int:
    return sum(self.depths)

  @property
  def out_channels(self) -> int:
    return self.hidden_sizes[-1]


@dataclasses.dataclass
class Pretrained:
  """A loaded ResNet: architecture, variables {'params', 'batch_stats'}, input normalisation."""
  arch: Architecture
  variables: Params
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  source: str  # 'random init (seed N)' or the directory the weights came from


def normalisation(weights_dir: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) from the directory's preprocessor_config.json, else ImageNet's."""
  path = os.path.join(os.path.expanduser(weights_dir), 'preprocessor_config.json')
  if weights_dir and os.path.exists(path):
    with open(path) as f:
      cfg = json.load(f)
    if 'image_mean' in cfg and 'image_std' in cfg:
      return tuple(cfg['image_mean']), tuple(cfg['image_std'])
  return IMAGENET_MEAN, IMAGENET_STD


def _model_dir(weights_dir: str) -> str:
  """The absolute path of a Hugging Face model directory; WeightsError if it is not one."""
  path = os.path.abspath(os.path.expanduser(weights_dir))
  if not os.path.isdir(path):
    raise WeightsError(
        f'No ResNet weights directory at {path}. Save one on a machine with internet access '
        "(`FlaxResNetModel.from_pretrained('microsoft/resnet-50').save_pretrained(DIR)`), copy "
        'it here and pass its path, or leave the weights key empty for random initialisation.')
  if not os.path.exists(os.path.join(path, 'config.json')):
    raise WeightsError(f'{path} has no config.json: it is not a Hugging Face model directory '
                       '(expected the output of save_pretrained).')
  return path


def architecture(weights_dir: str, config_overrides: dict | None = None) -> Architecture:
  """The architecture of `weights_dir`'s model (config.json only, no weights read), or of the
  random-init model `load('', config_overrides=...)` builds."""
  from transformers import ResNetConfig

  if not weights_dir:
    return Architecture.from_hf(ResNetConfig(**(config_overrides or {})))
  return Architecture.from_hf(ResNetConfig.from_pretrained(_model_dir(weights_dir),
                                                           local_files_only=True))


def load(weights_dir: str, *, seed: int = 0, config_overrides: dict | None = None,
         expected: Architecture | None = None) -> Pretrained:
  """Loads a ResNet from a local Hugging Face directory, or random-initialises ResNet-50.

  Args:
    weights_dir: a directory written by `save_pretrained` (flax_model.msgpack,
      or PyTorch weights converted with `from_pt`, which needs torch); '' for
      random initialisation.
    seed: initialisation seed when `weights_dir` is ''.
    config_overrides: ResNetConfig fields for the random init (tests use a tiny one).
    expected: the architecture the caller was configured with (from
      `architecture`); WeightsError if the loaded one differs.
  """
  loaded = _load(weights_dir, seed, config_overrides)
  if expected is not None and loaded.arch != expected:
    raise WeightsError(f'{loaded.source}: weights for {loaded.arch}, expected {expected}; the '
                       'directory changed after the run was configured. Start the run again.')
  return loaded


def _load(weights_dir: str, seed: int, config_overrides: dict | None) -> Pretrained:
  from transformers import FlaxResNetModel, ResNetConfig

  if not weights_dir:
    config = ResNetConfig(**(config_overrides or {}))  # defaults are ResNet-50
    model = FlaxResNetModel(config, input_shape=(1, 64, 64, 3), seed=seed, _do_init=True)
    return Pretrained(Architecture.from_hf(config), model.params, IMAGENET_MEAN, IMAGENET_STD,
                      f'random init (seed {seed})')
  path = _model_dir(weights_dir)
  files = set(os.listdir(path))
  if 'flax_model.msgpack' in files:
    model = FlaxResNetModel.from_pretrained(path, local_files_only=True)
  elif files & {'pytorch_model.bin', 'model.safetensors'}:
    require_torch(path)
    model = FlaxResNetModel.from_pretrained(path, from_pt=True, local_files_only=True)
  else:
    raise WeightsError(f'{path} holds no weights (flax_model.msgpack, model.safetensors or '
                       f'pytorch_model.bin); found {sorted(files)}.')
  mean, std = normalisation(path)
  params = jax.tree.map(np.asarray, model.params)
  return Pretrained(Architecture.from_hf(model.config), params, mean, std, path)


def _conv_bn(p: Params, s: Params, x: jax.Array, stride: int, relu: bool,
             impl: str) -> jax.Array:
  kernel = p['convolution']['kernel']
  x = conv2d(x, kernel.astype(x.dtype), stride, kernel.shape[0] // 2, impl)
  bn, stats = p['normalization'], s['normalization']
  scale = bn['scale'] * jax.lax.rsqrt(stats['var'] + _BN_EPS)
  x = x * scale.astype(x.dtype) + (bn['bias'] - stats['mean'] * scale).astype(x.dtype)
  return jax.nn.relu(x) if relu else x


def _stem(v: Params, x: jax.Array, impl: str) -> jax.Array:
  p, s = v['params']['embedder']['embedder'], v['batch_stats']['embedder']['embedder']
  x = _conv_bn(p, s, x, 2, True, impl)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def _block(v: Params, x: jax.Array, stage: str, layer: str, stride: int, projection: bool,
           impl: str) -> jax.Array:
  p = v['params']['encoder']['stages'][stage]['layers'][layer]
  s = v['batch_stats']['encoder']['stages'][stage]['layers'][layer]
  residual = _conv_bn(p['shortcut'], s['shortcut'], x, stride, False, impl) if projection else x
  h = _conv_bn(p['layer']['0'], s['layer']['0'], x, 1, True, impl)
  h = _conv_bn(p['layer']['1'], s['layer']['1'], h, stride, True, impl)
  h = _conv_bn(p['layer']['2'], s['layer']['2'], h, 1, False, impl)
  return jax.nn.relu(h + residual)


def normalise(pretrained_mean, pretrained_std, images: jax.Array) -> jax.Array:
  """images [n, H, W, 3] in [0, 1] -> what the pretrained weights expect."""
  mean = jnp.asarray(pretrained_mean, images.dtype)
  std = jnp.asarray(pretrained_std, images.dtype)
  return (images - mean) / std


def apply(arch: Architecture, variables: Params, x: jax.Array, start: int = -1,
          end: int | None = None, *, impl: str = 'patches') -> jax.Array:
  """Runs the network from `start` to `end` (block indices; -1 is the stem).

  Args:
    arch: the architecture (static).
    variables: {'params', 'batch_stats'} in transformers' FlaxResNet layout;
      only the entries of the blocks run are read.
    x: normalised images [n, H, W, 3] if start == -1, else the output of block
      start - 1.
    start: first block to run; -1 runs the stem (7x7 conv, max-pool) first.
    end: one past the last block to run (default: all).
    impl: 'patches' or 'native' convolutions.

  Returns:
    the feature map after block end - 1, [n, h, w, C].
  """
  blocks = arch.blocks()
  end = len(blocks) if end is None else end
  if start == -1:
    x = _stem(variables, x, impl)
    start = 0
  for stage, layer, stride, projection in blocks[start:end]:
    x = _block(variables, x, stage, layer, stride, projection, impl)
  return x


def block_variables(arch: Architecture, variables: Params, start: int,
                    end: int | None = None) -> Params:
  """The sub-tree of `variables` read by blocks start..end-1 (the stem too if start == -1)."""
  keep = {(s, j) for s, j, _, _ in arch.blocks()[max(start, 0):end]}

  def select(tree):
    stages = {}
    for (s, j) in sorted(keep):
      stages.setdefault(s, {'layers': {}})['layers'][j] = tree['encoder']['stages'][s]['layers'][j]
    out = {'encoder': {'stages': stages}}
    if start == -1:
      out['embedder'] = tree['embedder']
    return out

  return {'params': select(variables['params']), 'batch_stats': select(variables['batch_stats'])}
