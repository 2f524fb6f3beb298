"""Host-side image decoding and resizing shared by the file-based dataset sources.

Every source (MiniImagenet files, TFDS datasets) ends in the same step: an
RGB uint8 image resized once to the run's square size on the host, before the
split goes to the device (`autoaug_jax.core.tasks`). PIL's resampling filters
widen their support when shrinking, so downscaling is antialiased; images are
squashed to a square without cropping by default, as Ravi & Larochelle's
MiniImagenet tool did; `fit(..., crop='center')` keeps the aspect ratio by
cutting the central square first.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

# Bicubic with PIL's antialiased downscaling (what torchvision's antialias does).
RESAMPLE = Image.Resampling.BICUBIC


def to_rgb_array(image: Image.Image | np.ndarray) -> tuple[np.ndarray, bool]:
  """RGB uint8 [H, W, 3] from a PIL image or an array; also says if it was converted.

  Grey-scale, palette, CMYK and alpha images are converted to RGB (alpha
  dropped); arrays must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] uint8.
  """
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ValueError(f'image array must be uint8, got {image.dtype}')
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
      return np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1), True
    if image.ndim == 3 and image.shape[-1] == 4:
      return np.ascontiguousarray(image[..., :3]), True
    if image.ndim == 3 and image.shape[-1] == 3:
      return image, False
    raise ValueError(f'image array must be [H, W, 3] (or grey [H, W]), got shape {image.shape}')
  converted = image.mode != 'RGB'
  return np.asarray(image.convert('RGB')), converted


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """[H, W, 3] uint8 -> [size, size, 3] uint8, antialiased; no copy if already that size."""
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), RESAMPLE))


# How a non-square image becomes square (prepare's --crop).
CROPS = ('squash', 'center')


def fit(image: np.ndarray, size: int, crop: str = 'squash') -> np.ndarray:
  """[H, W, 3] uint8 -> [size, size, 3] uint8: squashed, or its central square resized."""
  if crop == 'center':
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side]
  elif crop != 'squash':
    raise ValueError(f'crop={crop!r}: choose one of {CROPS}.')
  return resize(image, size)


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
  """[n, H, W, 3] uint8 -> [n, size, size, 3] uint8."""
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((images.shape[0], size, size, 3), np.uint8)
  for i, image in enumerate(images):
    out[i] = resize(image, size)
  return out


def read_file(path: str) -> tuple[np.ndarray, bool]:
  """Decodes an image file to RGB uint8 [H, W, 3]; raises ValueError saying why it failed."""
  try:
    with Image.open(path) as im:
      im.load()  # decode now, so truncated files fail here rather than later
      return to_rgb_array(im)
  except Exception as e:  # noqa: BLE001 - PIL raises many types on malformed files
    raise ValueError(f'{type(e).__name__}: {e}') from e


def encode(image: np.ndarray, encoding: str) -> bytes:
  """PNG (lossless) or JPEG (quality 95) bytes of an RGB uint8 image."""
  buf = io.BytesIO()
  if encoding == 'png':
    Image.fromarray(image).save(buf, format='PNG')
  elif encoding == 'jpeg':
    Image.fromarray(image).save(buf, format='JPEG', quality=95)
  else:
    raise ValueError(f"encoding={encoding!r}: choose 'png' or 'jpeg'.")
  return buf.getvalue()


def parallel_map(fn: Callable, items: Sequence, threads: int | None = None) -> list:
  """`[fn(x) for x in items]` on a thread pool (PIL decodes and resizes without the GIL)."""
  threads = min(threads or os.cpu_count() or 1, 8, len(items))
  if threads <= 1:
    return [fn(x) for x in items]
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(fn, items, chunksize=max(1, len(items) // (4 * threads))))
