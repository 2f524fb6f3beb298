"""Hugging Face loading helpers shared by the pre-trained models (ResNet, CLIP, Stable Diffusion).

Everything here reads local folders only: the Hub is switched off
(`HF_HUB_OFFLINE`), and a folder with PyTorch weights only is converted,
which needs torch (an optional extra).
"""

from __future__ import annotations

import os
from typing import Any

from autoaug_jax.errors import WeightsError
from autoaug_jax.types import Params


def quiet() -> None:
  """Silences diffusers'/transformers' per-module deprecation lines; never the network."""
  os.environ.setdefault('DIFFUSERS_VERBOSITY', 'error')
  os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
  os.environ.setdefault('HF_HUB_OFFLINE', '1')


def require_torch(folder: str) -> None:
  """WeightsError unless torch is installed (to convert `folder`'s PyTorch weights)."""
  try:
    import torch  # noqa: F401
  except ImportError as e:
    raise WeightsError(
        f'{folder} holds only PyTorch weights; converting them needs torch. Install it '
        "(`pip install -e '.[torch]'`), or save Flax weights there with save_pretrained.") from e


def load_transformers(cls, folder: str, **kwargs) -> tuple[Any, Params]:
  """(model, params) of a transformers Flax class from a local folder.

  Flax weights load without a random init (`_do_init=False`). PyTorch weights
  are converted against an initialised model (transformers reads its params):
  model.safetensors needs no torch, pytorch_model.bin does.
  """
  files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
  if 'config.json' not in files:
    raise WeightsError(f'{folder}: no config.json; expected a save_pretrained directory.')
  try:
    if 'flax_model.msgpack' in files:
      return cls.from_pretrained(folder, local_files_only=True, _do_init=False, **kwargs)
    if 'model.safetensors' in files or 'pytorch_model.bin' in files:
      if 'model.safetensors' not in files:
        require_torch(folder)
      model = cls.from_pretrained(folder, local_files_only=True,
                                  from_pt='model.safetensors' not in files, **kwargs)
      return model, model.params
  except (OSError, ValueError, KeyError) as e:
    raise WeightsError(f'{folder}: could not load {cls.__name__}: {e}') from e
  raise WeightsError(f'{folder} holds no weights (flax_model.msgpack, model.safetensors or '
                     f'pytorch_model.bin); found {sorted(files)}.')
