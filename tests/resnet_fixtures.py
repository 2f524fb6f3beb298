"""A tiny random ResNet saved with save_pretrained, for tests of the real loading path."""

from __future__ import annotations

import json
import pathlib

import jax

TINY = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 24], depths=[1, 2, 1, 1],
            layer_type='bottleneck')


def save_tiny_resnet(path: pathlib.Path, seed: int = 3):
  """Writes a tiny ResNet with non-trivial BatchNorm statistics to `path`; returns the model."""
  from transformers import FlaxResNetModel, ResNetConfig
  model = FlaxResNetModel(ResNetConfig(**TINY), input_shape=(1, 32, 32, 3), seed=seed)
  # Non-trivial running statistics (a fresh init has mean 0, var 1), centred so
  # that the ReLUs of this tiny network stay alive and every layer gets gradient.
  key = iter(jax.random.split(jax.random.key(seed + 4), 10_000))
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: (x * jax.random.uniform(next(key), x.shape, minval=0.5, maxval=1.5)
                       if 'var' in jax.tree_util.keystr(path)
                       else x + 0.1 * jax.random.normal(next(key), x.shape)),
      model.params['batch_stats'])
  model.params = {'params': model.params['params'], 'batch_stats': stats}
  model.save_pretrained(str(path))
  with open(path / 'preprocessor_config.json', 'w') as f:
    json.dump({'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.25, 0.25, 0.25]}, f)
  return model
