"""Inner loop: a freshly initialised classifier trained by I full-batch SGD steps on S u S'.

Data flow: augmenter -> inner loop (this module) -> objective. The loop is a
`jax.lax.scan`, so `jax.grad` of the final query loss differentiates through
every step (exact second-order meta-gradient; a first-order approximation
would give the augmenter exactly zero gradient, since S' reaches the query
loss only through the inner gradients). `remat=True` wraps the step body in
`jax.checkpoint`: memory then stays constant in the number of steps, for one
recomputed forward+backward per step in the backward pass.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from autoaug_jax.types import Params


@dataclasses.dataclass(frozen=True)
class InnerLoop:
  """The inner loop's settings (hashable: closed over by jit).

  steps: I, the SGD steps on S u S'; lr: their learning rate; remat: recompute
  each step's activations in the backward pass; unroll: compile the scan fully
  unrolled (for XLA's FLOP count only, which sees a scan body once).
  """
  steps: int
  lr: float
  remat: bool = True
  unroll: bool = False


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy; logits [n, N], labels [n] int, weights [n] or None.

  With weights, the weighted mean sum(w * CE) / sum(w).
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return losses.mean()
  return (weights * losses).sum() / weights.sum()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return (jnp.argmax(logits, -1) == labels).mean()


def train_classifier(classifier, params: Params, features: jax.Array, labels: jax.Array, *,
                     steps: int, lr: float, remat: bool, unroll: bool = False,
                     weights: jax.Array | None = None) -> tuple[Params, jax.Array]:
  """Runs `steps` SGD steps of the classifier's trained part.

  Args:
    classifier: object with `logits(params, features) -> [n, N]`.
    params: initial trainable parameters.
    features: [n, ...] inputs of the trained part (from `classifier.embed`).
    labels: [n] int32.
    steps: number of inner steps I (static).
    lr: SGD learning rate.
    remat: recompute each step's activations in the backward pass.
    unroll: unroll the scan fully (only for XLA's FLOP count, which sees a
      scan body once).
    weights: [n] per-example weights of the training loss, or None (plain mean).

  Returns:
    (parameters after `steps` steps, training loss before each step [steps]).
  """
  def loss_fn(p):
    return cross_entropy(classifier.logits(p, features), labels, weights)

  def step(p, _):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    return jax.tree.map(lambda w, g: w - lr * g, p, grads), loss

  if remat:
    step = jax.checkpoint(step)
  return jax.lax.scan(step, params, None, length=steps, unroll=steps if unroll else 1)

