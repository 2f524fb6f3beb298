"""Orbax checkpoints of the meta-training state: the latest ones and the best on meta-val.

Used only by the orchestrator (`train.py`). Two managers under
`WORKDIR/checkpoints/`: `latest/` keeps the last `keep` saves (resume reads
it), `best/` keeps the one save with the highest meta-validation accuracy
(the final report evaluates it). Orbax writes each save to a temporary
directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoint intact. Restores are shaped by an abstract target built
from a freshly initialised state, so a checkpoint written on 4 devices
restores on 1 and vice versa.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that is missing or does not fit this config; the message says which."""


def _abstract(state: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpoints:
  """The latest/best checkpoint pair of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    # Orbax's TensorStore paths must be absolute; users pass relative workdirs.
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    common = {'enable_async_checkpointing': False, 'read_only': read_only,
              'create': not read_only}
    self._latest = ocp.CheckpointManager(
        os.path.join(root, 'latest'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common))
    self._best = ocp.CheckpointManager(
        os.path.join(root, 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m['val_acc'], best_mode='max',
            keep_checkpoints_without_metrics=False, **common))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.best_step()

  def best_metrics(self) -> dict | None:
    step = self.best_step()
    return None if step is None else self._best.metrics(step)

  def save_latest(self, step: int, state: Any) -> None:
    self._latest.save(step, args=ocp.args.StandardSave(state), force=True)

  def save_best(self, step: int, state: Any, val_acc: float) -> None:
    """Offers `state` as best; orbax keeps whichever has the highest val_acc."""
    self._best.save(step, args=ocp.args.StandardSave(state),
                    metrics={'val_acc': float(val_acc)}, force=True)

  def resolve(self, which: str) -> tuple[str, int]:
    """'latest' | 'best' | 'STEP' -> (manager name, step); raises CheckpointError."""
    if which in ('latest', 'best'):
      step = self.latest_step() if which == 'latest' else self.best_step()
      if step is None:
        raise CheckpointError(f'No {which!r} checkpoint in {self._latest.directory.parent}.')
      return which, step
    try:
      step = int(which)
    except ValueError:
      raise CheckpointError(
          f"checkpoint={which!r}: use 'best', 'latest' or a step number.") from None
    for name, manager in (('latest', self._latest), ('best', self._best)):
      if step in manager.all_steps():
        return name, step
    raise CheckpointError(
        f'No checkpoint at step {step}; saved steps: latest {self._latest.all_steps()}, '
        f'best {self._best.all_steps()}.')

  def restore(self, which: str, target: Any) -> Any:
    """Restores 'latest', 'best' or a step number into the structure of `target`."""
    name, step = self.resolve(which)
    manager = self._latest if name == 'latest' else self._best
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(_abstract(target)))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f'The {name} checkpoint at step {step} in {manager.directory} does not match '
          f'this config ({e}). Use the config the run was started with, or a new workdir.'
      ) from e

  def close(self) -> None:
    self._latest.close()
    self._best.close()
