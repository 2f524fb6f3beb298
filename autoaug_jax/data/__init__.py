"""Datasets: registry of loaders returning a `FewShotSplit` per class split.

A loader is `load_split(data_config, split, image_size) -> FewShotSplit` with
split one of 'train', 'val', 'test' (disjoint classes). New sources register
here by name; `config.data.name` selects one.
"""

from autoaug_jax.data import glyphs
from autoaug_jax.data.split import FewShotSplit

DATASETS = {
    'glyphs': glyphs.load_split,
}


def load_split(data_config, split: str, image_size: int) -> FewShotSplit:
  """Loads one class split of the dataset named by `data_config.name`."""
  if data_config.name not in DATASETS:
    raise ValueError(f'data.name={data_config.name!r} is unknown; choose one of '
                     f'{sorted(DATASETS)}.')
  return DATASETS[data_config.name](data_config, split, image_size)


__all__ = ['DATASETS', 'FewShotSplit', 'load_split']
