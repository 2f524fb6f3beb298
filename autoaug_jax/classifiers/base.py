"""Classifiers trained inside the inner loop, behind one interface.

Data flow: augmenter -> classifier (this package) -> inner loop. A classifier
has four parts, all pure but the loading in `constants`:

- `constants(seed)`: host arrays that never change during a run (a
  pre-trained network's weights; `{}` for the ConvNet). The orchestrator places
  them on the devices once and passes them to every compiled step as an
  argument: closed over instead, XLA would bake 100 MB of ResNet-50 weights
  into each executable.
- `init(key, image_shape, consts)`: the parameters the inner SGD trains, fresh
  for every task.
- `embed(consts, images)`: the part that stays fixed during the inner loop,
  run once per task on S, S' and Q outside the scan, differentiably (the
  meta-gradient reaches S' through it).
- `logits(params, features)`: the part every inner step runs.

(`describe()` names the classifier in reports.) The paper's ConvNet
(Section 4.1) trains everything, so its `embed` only
rescales pixels. The pre-trained ResNet-50 (Section 4.6) puts its frozen
bottom in `embed`, so twenty inner steps cost twenty passes through the top
blocks and the head only (`embed_once=False` runs the whole network in every
step instead, for the benchmark's comparison).
"""

from __future__ import annotations

from typing import Protocol

import jax

from autoaug_jax.types import Params


class Classifier(Protocol):
  """What the inner loop, the objective and evaluation need of a classifier."""

  def constants(self, seed: int) -> Params: ...

  def init(self, key: jax.Array, image_shape: tuple[int, int, int], consts: Params) -> Params: ...

  def embed(self, consts: Params, images: jax.Array) -> jax.Array: ...

  def logits(self, params: Params, features: jax.Array) -> jax.Array: ...

  def describe(self) -> str: ...
