"""Named, stateless PRNG streams derived from one root key.

Every random draw of a run comes from `config.seed` through these functions:
a stream per purpose (`stream(root, 'train')`), a key per step or task index
(`jax.random.fold_in`). Nothing depends on how many draws happened before, so
a resumed run and an uninterrupted one see the same keys, and every method in
the paired evaluation sees the same tasks and classifier initialisations.
"""

from __future__ import annotations

import zlib

import jax

from autoaug_jax.types import PRNGKey


def root_key(seed: int) -> PRNGKey:
  return jax.random.key(seed)


def stream(key: PRNGKey, name: str) -> PRNGKey:
  """An independent key for the purpose `name` (stable across code changes)."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def task_keys(key: PRNGKey, index: jax.Array) -> dict[str, PRNGKey]:
  """The keys of task number `index` of a stream: sampling, augmentation, classifier init."""
  k = jax.random.fold_in(key, index)
  return {name: stream(k, name) for name in ('sample', 'augment', 'init')}
