"""Datasets: registry of loaders returning a `FewShotSplit` per class split.

A loader is `load_split(data_config, split, image_size) -> FewShotSplit` with
split one of 'train', 'val', 'test' (disjoint classes). `config.data.name`
selects one:

- `glyphs`: the embedded dataset, rendered from fonts (no files needed);
- `mini_imagenet`: MiniImagenet prepared once by `python -m
  autoaug_jax.data.prepare` into `data.dir`;
- `tfds`: any image-classification dataset already in a local TFDS
  `data.dir`, with a class split from the config.
"""

from autoaug_jax.data import glyphs, mini_imagenet, tfds_source
from autoaug_jax.data.split import DataError, FewShotSplit

DATASETS = {
    'glyphs': glyphs.load_split,
    'mini_imagenet': mini_imagenet.load_split,
    'tfds': tfds_source.load_split,
}


def load_split(data_config, split: str, image_size: int) -> FewShotSplit:
  """Loads one class split of the dataset named by `data_config.name`."""
  if data_config.name not in DATASETS:
    raise ValueError(f'data.name={data_config.name!r} is unknown; choose one of '
                     f'{sorted(DATASETS)}.')
  return DATASETS[data_config.name](data_config, split, image_size)


def clear_caches() -> None:
  """Frees host copies kept while a dataset's splits are loaded one after another."""
  tfds_source.clear_cache()


__all__ = ['DATASETS', 'DataError', 'FewShotSplit', 'clear_caches', 'load_split']
