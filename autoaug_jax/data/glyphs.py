"""The embedded few-shot dataset: glyph images rendered from fonts that ship with matplotlib.

First stage of the data flow (dataset -> task sampler -> ...). It needs no
download: glyph outlines come from the DejaVu and STIX fonts inside the
matplotlib wheel, rasterised with matplotlib's Agg renderer.

Class identity lives in the glyph's shape (100 characters from Latin, Greek,
Cyrillic, digits and symbols). Everything else is a class-independent
nuisance drawn per image: font (14 faces), rotation, shear, scale, position,
stroke width, foreground colour, a two-colour gradient background with a
striped texture and pixel noise, and an optional clutter stroke. A
few-shot classifier therefore has to ignore colour, texture and pose, which
is what augmentation is supposed to teach it.

The whole dataset is generated once per (image size, images per class) and
cached as an .npz (written to a temporary file and renamed, so an
interrupted generation never leaves a file that looks complete). The split
into 64/16/20 meta-train/val/test classes is fixed, like Ravi & Larochelle's
MiniImagenet split, and does not depend on the run's seed.
"""

from __future__ import annotations

import os
import zipfile

import matplotlib
import numpy as np
from absl import logging
from matplotlib import ft2font
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.font_manager import FontProperties
from matplotlib.path import Path
from matplotlib.textpath import TextPath
from matplotlib.transforms import Affine2D

from autoaug_jax.data.split import FewShotSplit

# Bump when rendering changes: the cache key includes it.
VERSION = 1
NUM_CLASSES = 100
SPLIT_SIZES = {'train': 64, 'val': 16, 'test': 20}
_SPLIT_SEED = 0
_FONT_FILES = (
    'DejaVuSans.ttf', 'DejaVuSans-Bold.ttf', 'DejaVuSans-Oblique.ttf',
    'DejaVuSans-BoldOblique.ttf', 'DejaVuSerif.ttf', 'DejaVuSerif-Bold.ttf',
    'DejaVuSerif-Italic.ttf', 'DejaVuSerif-BoldItalic.ttf', 'DejaVuSansMono.ttf',
    'DejaVuSansMono-Bold.ttf', 'STIXGeneral.ttf', 'STIXGeneralBol.ttf',
    'STIXGeneralItalic.ttf', 'STIXGeneralBolIta.ttf',
)
# Candidates in a fixed order; look-alikes (O/0/Θ, I/l/1, c/C, ...) are left
# out so that no two classes share a shape. The first NUM_CLASSES that at
# least _MIN_FONTS faces can draw become the classes.
_CANDIDATES = (
    'ABCDEFGHJKLMNPQRSTUVWXYZ' 'abdefghkmnqrty' '23456789'
    'ΓΔΛΞΠΣΦΨΩ' 'αβγδεζηθλμξπσφψω'
    'БДЖИЛЦЧШЩЪЫЭЮЯбвгджилцшыэюя'
    '&@#%?§¶€£¥¢∞∂∇∫√±÷♠♣♥♦★✓⊕⊗∀∃∈≈≠≤≥'
)
_MIN_FONTS = 4


def _font_dir() -> str:
  return os.path.join(matplotlib.get_data_path(), 'fonts', 'ttf')


def class_fonts() -> list[tuple[str, list[str]]]:
  """Returns [(character, [font paths that draw it])] for the NUM_CLASSES classes."""
  fonts = [os.path.join(_font_dir(), f) for f in _FONT_FILES]
  charmaps = [set(ft2font.FT2Font(f).get_charmap()) for f in fonts]
  classes = []
  for ch in _CANDIDATES:
    have = [f for f, cmap in zip(fonts, charmaps, strict=True) if ord(ch) in cmap]
    if len(have) >= _MIN_FONTS:
      classes.append((ch, have))
    if len(classes) == NUM_CLASSES:
      return classes
  raise RuntimeError(
      f'Only {len(classes)} glyph classes are drawable with the fonts in {_font_dir()}; '
      f'{NUM_CLASSES} are needed. Reinstall matplotlib (pinned in pyproject.toml).')


def split_classes() -> dict[str, np.ndarray]:
  """Fixed class indices of each split (64/16/20), independent of the run seed."""
  perm = np.random.default_rng(_SPLIT_SEED).permutation(NUM_CLASSES)
  out, start = {}, 0
  for name, size in SPLIT_SIZES.items():
    out[name] = np.sort(perm[start:start + size])
    start += size
  return out


def _unit_path(ch: str, font: str):
  """The glyph outline centred on the origin with its longer side 1."""
  path = TextPath((0, 0), ch, size=1, prop=FontProperties(fname=font))
  lo, hi = path.vertices.min(0), path.vertices.max(0)
  centre, extent = (lo + hi) / 2, max((hi - lo).max(), 1e-3)
  return path, Affine2D().translate(-centre[0], -centre[1]).scale(1 / extent)


def _rasterise(path, transform, size: int, stroke: float, fill: bool = True) -> np.ndarray:
  """Anti-aliased coverage of a path: float32 [size, size] in [0, 1]."""
  renderer = RendererAgg(size, size, 72)
  gc = renderer.new_gc()
  gc.set_antialiased(True)
  gc.set_foreground((1.0, 1.0, 1.0))
  gc.set_linewidth(max(stroke, 0.0))
  renderer.draw_path(gc, path, transform, (1.0, 1.0, 1.0) if fill else None)
  return np.asarray(renderer.buffer_rgba())[..., 3].astype(np.float32) / 255.0


def _luminance(rgb: np.ndarray) -> np.ndarray:
  return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Gradient between two colours, striped texture and pixel noise: [size, size, 3]."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5
  c0, c1 = rng.uniform(0.4, 1.0, (2, 3)).astype(np.float32)
  bg = c0 + np.clip(ramp, 0, 1)[..., None] * (c1 - c0)
  freq, theta = rng.uniform(2, 7), rng.uniform(0, np.pi)
  stripes = np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy)
                   + rng.uniform(0, 2 * np.pi))
  bg = bg + rng.uniform(0.0, 0.1) * stripes[..., None]
  bg = bg + rng.normal(0, 0.03, bg.shape).astype(np.float32)
  return np.clip(bg, 0, 1)


def render_image(ch_path, rng: np.random.Generator, size: int):
  """Draws one image of a glyph class with fresh nuisance factors.

  Returns:
    (image [size, size, 3] uint8, foreground alpha [size, size] uint8).
  """
  path, to_unit = ch_path
  scale = size * rng.uniform(0.6, 0.85)
  margin = (size - scale) / 2
  centre = size / 2 + rng.uniform(-margin, margin, 2) * 0.8
  transform = (to_unit + Affine2D().skew_deg(rng.uniform(-8, 8), 0)
               .scale(scale * rng.uniform(0.85, 1.15), scale)
               .rotate_deg(rng.uniform(-15, 15)).translate(*centre))
  alpha = _rasterise(path, transform, size, stroke=rng.uniform(0.0, 0.05) * size)
  bg = _background(rng, size)
  # Ink on paper: a dark foreground of random hue on a light background, at
  # least 0.35 apart in luminance. (Random polarity as well made 5-shot tasks
  # unlearnable for the paper's ConvNet: chance level, see BUILD_NOTES.md.)
  bg_lum = _luminance(bg.reshape(-1, 3).mean(0))
  for _ in range(20):
    fg = rng.uniform(0, 0.45, 3).astype(np.float32)
    if bg_lum - _luminance(fg) > 0.35:
      break
  img = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
  if rng.uniform() < 0.3:  # clutter: a random stroke across the image
    line = _rasterise(Path(rng.uniform(0, size, (2, 2))), Affine2D(), size,
                      stroke=rng.uniform(0.03, 0.06) * size, fill=False)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    img = img * (1 - line[..., None]) + colour * line[..., None]
  return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), (alpha * 255 + 0.5).astype(np.uint8)


def generate(image_size: int, images_per_class: int) -> tuple[np.ndarray, np.ndarray]:
  """Renders every class.

  Returns:
    images [NUM_CLASSES, images_per_class, S, S, 3] uint8 and
    alphas [NUM_CLASSES, images_per_class, S, S] uint8 (glyph coverage).
  """
  classes = class_fonts()
  images = np.empty((NUM_CLASSES, images_per_class, image_size, image_size, 3), np.uint8)
  alphas = np.empty((NUM_CLASSES, images_per_class, image_size, image_size), np.uint8)
  for c, (ch, fonts) in enumerate(classes):
    paths = [_unit_path(ch, f) for f in fonts]
    for i in range(images_per_class):
      # One stream per image: the dataset does not depend on generation order.
      rng = np.random.default_rng([VERSION, c, i])
      images[c, i], alphas[c, i] = render_image(paths[rng.integers(len(paths))], rng, image_size)
  return images, alphas


def default_cache_dir() -> str:
  return os.environ.get('AUTOAUG_JAX_CACHE',
                        os.path.join(os.path.expanduser('~'), '.cache', 'autoaug_jax'))


def cached(image_size: int, images_per_class: int, cache_dir: str = '') -> tuple[
    np.ndarray, np.ndarray]:
  """`generate`, read from or written to an .npz cache."""
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, f'glyphs-v{VERSION}-s{image_size}-n{images_per_class}.npz')
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        return f['images'], f['alphas']
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
      logging.warning('Glyph cache %s is unreadable (%s); regenerating it.', path, e)
  logging.info('Rendering the glyph dataset (%d classes x %d images, %dx%d) into %s',
               NUM_CLASSES, images_per_class, image_size, image_size, path)
  images, alphas = generate(image_size, images_per_class)
  try:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}.npz'
    np.savez(tmp, images=images, alphas=alphas)
    os.replace(tmp, path)
  except OSError as e:  # a read-only cache costs time, not correctness
    logging.warning('Could not write the glyph cache %s (%s); continuing without it.', path, e)
  return images, alphas


def load_split(split: str, image_size: int, *, images_per_class: int,
               cache_dir: str = '') -> FewShotSplit:
  """The `glyphs` dataset's classes of one split ('train', 'val' or 'test'), rendered
  (or read from the .npz cache in `cache_dir`, default `default_cache_dir()`)."""
  if split not in SPLIT_SIZES:
    raise ValueError(f'Unknown split {split!r}; choose one of {sorted(SPLIT_SIZES)}.')
  if images_per_class < 1:
    raise ValueError(f'images_per_class={images_per_class} must be >= 1.')
  images, alphas = cached(image_size, images_per_class, cache_dir)
  idx = split_classes()[split]
  names = [ch for ch, _ in class_fonts()]
  n = images_per_class
  return FewShotSplit(
      images=images[idx].reshape(-1, image_size, image_size, 3),
      labels=np.repeat(np.arange(len(idx), dtype=np.int32), n),
      class_names=[names[i] for i in idx],
      masks=alphas[idx].reshape(-1, image_size, image_size),
      name=f'glyphs/{split}')
