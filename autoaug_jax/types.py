"""Types shared by every layer: parameter trees, keys, the frozen-weights struct, float dtype.

A leaf module: it imports JAX and Flax, nothing of the package.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

# A pytree of arrays (a Flax `params` collection, an optax state, ...).
Params = Any
# A typed PRNG key (`jax.random.key`), or raw uint32 key data where a checkpoint holds it.
PRNGKey = jax.Array


def float_dtype() -> jnp.dtype:
  """The default float dtype: float32, or float64 under jax_enable_x64 (gradient checks)."""
  return jnp.result_type(float)


@struct.dataclass
class Constants:
  """Frozen weights a compiled step reads but never trains, passed as an argument.

  Closed over instead, XLA would bake them into every executable (100 MB of
  ResNet-50, 2 GB of Stable Diffusion). `augmenter`: the run augmenter's
  (Stable Diffusion's; {} for the others); `classifier`: the classifier's
  (a pre-trained ResNet's; {} for the ConvNet). Test-time adaptation trains
  the classifier inside its augmenter, so its `augmenter` slot holds a whole
  `Constants` (`adaptation.method_constants`).

  Fields are in the order of the dict this replaced ({'augmenter', 'classifier'},
  sorted), so compiled programs see their arguments in the same order.
  """
  augmenter: Params = dataclasses.field(default_factory=dict)
  classifier: Params = dataclasses.field(default_factory=dict)
