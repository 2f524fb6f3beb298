"""Datasets: loaders returning a `FewShotSplit` per class split, imported on use.

Each loader is `load_split(split, image_size, **its settings) -> FewShotSplit`
with split one of 'train', 'val', 'test' (disjoint classes);
`config.builders.DATASETS` maps `config.data.name` to one:

- `glyphs`: the embedded dataset, rendered from fonts (no files needed);
- `mini_imagenet`: MiniImagenet prepared once by `python -m
  autoaug_jax.data.prepare` into `data.dir`;
- `tfds`: any image-classification dataset already in a local TFDS
  `data.dir`, with a class split from the config; one's own class-folder
  trees become such datasets through `prepare` (`image_folders`).

Nothing is imported here, so that importing `data.split` (the task sampler
does) pulls in neither TFDS nor matplotlib.
"""

import sys


def clear_caches() -> None:
  """Frees host copies kept while a dataset's splits are loaded one after another."""
  tfds_source = sys.modules.get('autoaug_jax.data.tfds_source')
  if tfds_source is not None:  # nothing to free if it was never imported
    tfds_source.clear_cache()
