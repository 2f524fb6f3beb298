"""Orbax checkpoints of the meta-training state: the latest ones and the best on meta-val.

Used by the orchestrators (`train.py`, `evaluate.py`). Two folders under
`WORKDIR/checkpoints/`: `latest/` keeps the last `keep` saves (resume reads
it) and `best/` the states that were the best on meta-validation so far (the
newest two, and the one the newest latest save knew as best). What makes a
kill at any moment harmless:

- Orbax writes a save into a temporary folder and renames it when complete,
  with our metadata inside (a best save's meta-val accuracy; a latest save's
  best-so-far step and accuracy), so both exist exactly when the folder does.
  A manifest of every file's size (`autoaug_manifest.json`) follows the
  rename. A folder whose files disagree with it (truncated, half-deleted) is
  damaged: a warning names it, a writable opening moves it to
  `checkpoints/damaged/`, and the previous save is used instead. Folders
  without a manifest (a kill right after the rename, or an older version of
  this module) are judged by whether Orbax can read them.
- Old saves are deleted here, not by Orbax: renamed to Orbax's temporary
  form first (removed at the next opening if the kill came mid-way), then
  removed.
- A resumed run calls `resume(step)`: best saves made after the latest
  checkpoint belong to steps the run now recomputes and are removed, and the
  best so far is the one recorded with that checkpoint. Best decisions (keep
  a state whose accuracy is at least the best so far; ties go to the later
  step) are then the same as in an uninterrupted run.

Restores are shaped by an abstract target built from a freshly initialised
state, so a checkpoint written on 4 devices restores on 1 and vice versa, and
one written by 2 processes restores in 1 (the state is replicated).

In a multi-process run every process calls the same methods in the same
order: Orbax's saves and restores are collective (process 0 writes the
replicated arrays, all read), while this module's own file operations
(clean-up, setting damaged folders aside, manifests, deletions) are process
0's, each followed by a barrier before the others look.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from autoaug_jax.errors import CheckpointError
from autoaug_jax.run import atomic_files, cluster

MANIFEST = 'autoaug_manifest.json'
_BEST_KEEP = 2
_DELETING = '.orbax-checkpoint-tmp-deleting'  # Orbax's temporary form: removed on reopening


def _abstract(state: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _files(folder: str) -> dict[str, int]:
  """Relative path -> size of every file under `folder` (the manifest left out)."""
  sizes = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel != MANIFEST:
        sizes[rel] = os.path.getsize(path)
  return sizes


def _short(error: BaseException | str, limit: int = 160) -> str:
  text = ' '.join(str(error).split())
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      value = json.load(f)
    return value if isinstance(value, dict) else None
  except (OSError, ValueError):
    return None


@dataclasses.dataclass
class _Step:
  step: int
  path: str
  problem: str | None = None  # why the folder is unusable; None if it looks intact

  @property
  def meta(self) -> dict:
    """Our metadata, saved atomically with the checkpoint ({} if unreadable or older)."""
    step_meta = _read_json(os.path.join(self.path, '_CHECKPOINT_METADATA')) or {}
    return step_meta.get('custom_metadata') or {}

  def val_acc(self) -> float | None:
    """A best save's meta-val accuracy (older versions: Orbax's metrics item)."""
    if 'val_acc' in self.meta:
      return float(self.meta['val_acc'])
    legacy = _read_json(os.path.join(self.path, 'metrics', 'metrics')) or {}
    return float(legacy['val_acc']) if 'val_acc' in legacy else None


def _inspect(path: str, step: int) -> _Step:
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.exists(manifest_path):
    return _Step(step, path)
  manifest = _read_json(manifest_path)
  if manifest is None or not isinstance(manifest.get('files'), dict):
    return _Step(step, path, 'its manifest is unreadable')
  found = _files(path)
  for rel, size in sorted(manifest['files'].items()):
    if rel not in found:
      return _Step(step, path, f'{rel} is missing')
    if found[rel] != size:
      return _Step(step, path, f'{rel} has {found[rel]} bytes, {size} were written')
  return _Step(step, path)


def _remove_temporaries(directory: str) -> None:
  """Removes what killed saves and deletions left: Orbax's `<step>.orbax-checkpoint-tmp*`."""
  if not os.path.isdir(directory):
    return
  for entry in os.listdir(directory):
    if '.orbax-checkpoint-tmp' in entry:
      logging.info('Removing %s, left by an interrupted save or deletion.', entry)
      shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


class _Folder:
  """One Orbax manager and what this module knows about its step folders."""

  def __init__(self, root: str, name: str, read_only: bool):
    self.name, self.read_only = name, read_only
    # Only process 0 changes the folder; the others wait at barriers.
    self._writes = not read_only and cluster.is_primary()
    self.directory = os.path.join(root, name)
    self._damaged_root = os.path.join(root, 'damaged')
    self.set_aside_log: list[str] = []
    if self._writes:
      _remove_temporaries(self.directory)
    cluster.barrier(f'cleaned-{name}')
    # Orbax's own clean-up of temporary folders runs in a background thread, racing
    # whatever comes next (a reopen, our deletions); ours above finishes first.
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=None, enable_async_checkpointing=False, read_only=read_only,
        create=not read_only, cleanup_tmp_directories=False)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)  # collective
    self.steps: dict[int, _Step] = {}
    for step in self.manager.all_steps():
      info = _inspect(os.path.join(self.directory, str(step)), step)
      if info.problem:
        self.set_aside(info)
      else:
        self.steps[step] = info
    cluster.barrier(f'inspected-{name}')  # damaged folders moved before anyone goes on

  def reopen(self) -> None:
    """A fresh manager: a failed restore can leave Orbax's guess of the item layout
    (taken from the unreadable folder) behind, which would fail the next one too."""
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def set_aside(self, info: _Step) -> None:
    """Warns about a damaged step folder; a writable folder moves it to checkpoints/damaged/."""
    where = f'{self.name}/{info.step}'
    self.steps.pop(info.step, None)
    self.set_aside_log.append(f'{where} ({info.problem})')
    if not self._writes:
      logging.warning('Checkpoint %s is damaged (%s); it is skipped.', where, info.problem)
      return
    os.makedirs(self._damaged_root, exist_ok=True)
    dest = os.path.join(self._damaged_root, f'{self.name}-{info.step}')
    n = 1
    while os.path.exists(dest):
      n += 1
      dest = os.path.join(self._damaged_root, f'{self.name}-{info.step}.{n}')
    os.rename(info.path, dest)
    logging.warning('Checkpoint %s is damaged (%s); moved to %s and not used.', where,
                    info.problem, dest)
    self.manager.reload()

  def newest(self) -> int | None:
    return max(self.steps) if self.steps else None

  def save(self, step: int, state: Any, meta: dict) -> bool:
    if step in self.manager.all_steps():
      return False  # already saved by the run this one resumes: the same state
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True,
                      custom_metadata=meta)
    path = os.path.join(self.directory, str(step))
    if cluster.is_primary():
      atomic_files.write_json(os.path.join(path, MANIFEST),
                              {'step': step, 'files': _files(path)}, indent=None)
    cluster.barrier(f'manifest-{self.name}-{step}')
    self.steps[step] = _Step(step, path)
    return True

  def delete(self, step: int) -> None:
    """Removes a save; a kill mid-way leaves a temporary folder, removed on reopening."""
    info = self.steps.pop(step)
    if cluster.is_primary() and os.path.exists(info.path):
      doomed = f'{info.path}{_DELETING}{time.time_ns()}'
      os.rename(info.path, doomed)
      shutil.rmtree(doomed)
    cluster.barrier(f'deleted-{self.name}-{step}')
    self.manager.reload()

  def restore(self, step: int, target: Any) -> Any:
    return self.manager.restore(step, args=ocp.args.StandardRestore(_abstract(target)))

  def close(self) -> None:
    self.manager.close()


def _param_shapes(tree: Any, prefix: str) -> dict[tuple, tuple]:
  """{key path: shape} of the leaves under attribute/key `prefix` of a state pytree."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = tuple(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', None))) for k in path)
    if keys and keys[0] == prefix:
      out[tuple(map(str, keys))] = tuple(leaf.shape if hasattr(leaf, 'shape') else np.shape(leaf))
  return out


class Checkpoints:
  """The latest/best checkpoints of one workdir.

  `read_only=True` (evaluation) never writes: damaged folders are skipped
  with a warning instead of being moved, and nothing is rolled back.
  `layout`: the processes and devices of this run, recorded with each latest
  save (`layout(step)` reads it back).
  """

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False,
               layout: dict[str, int] | None = None):
    # Orbax's TensorStore paths must be absolute; users pass relative workdirs.
    self.root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    if read_only and not os.path.isdir(self.root):
      raise CheckpointError(f'{workdir} has no checkpoints/ folder: no meta-training step was '
                            'saved there.')
    self.keep = keep
    self._layout = dict(layout or {})
    self._latest = _Folder(self.root, 'latest', read_only)
    self._best = _Folder(self.root, 'best', read_only)
    self._running_best: tuple[int, float] | None = self._best_of(self._best.steps)

  @property
  def damaged(self) -> list[str]:
    """'folder/step (why)' of every damaged save found so far."""
    return self._latest.set_aside_log + self._best.set_aside_log

  def _best_of(self, steps) -> tuple[int, float] | None:
    """The highest-accuracy save among `steps` of best/ (ties: the later step)."""
    scored = [(acc, s) for s in steps if (acc := self._best.steps[s].val_acc()) is not None]
    return (max(scored)[1], max(scored)[0]) if scored else None

  def latest_step(self) -> int | None:
    return self._latest.newest()

  def layout(self, step: int) -> dict[str, int]:
    """{'process_count', 'num_devices'} recorded with latest save `step` ({}: older saves)."""
    meta = self._latest.steps[step].meta if step in self._latest.steps else {}
    return {k: meta[k] for k in ('process_count', 'num_devices') if k in meta}

  def best_step(self) -> int | None:
    best = self._best_of(self._best.steps)
    return None if best is None else best[0]

  def best_val_acc(self, step: int | None = None) -> float | None:
    """Meta-val accuracy of best save `step` (default: the best)."""
    step = self.best_step() if step is None else step
    return None if step not in self._best.steps else self._best.steps[step].val_acc()

  def resume(self, step: int | None) -> None:
    """Prepares to continue a run restored at latest `step` (None: from scratch): best
    saves after it are removed (the run recomputes those steps, maybe with changed
    settings) and the best so far is the one recorded with that checkpoint."""
    step = step or 0
    for s in sorted(self._best.steps):
      if s > step:
        logging.info('Removing best/%d, made after the latest checkpoint (step %d): its step '
                     'is recomputed.', s, step)
        self._best.delete(s)
    meta = self._latest.steps[step].meta if step in self._latest.steps else {}
    recorded = meta.get('best_step')
    if 'best_step' in meta and (recorded is None or recorded in self._best.steps):
      self._running_best = None if recorded is None else (int(recorded),
                                                          float(meta['best_val_acc']))
      return
    if recorded is not None:
      logging.warning('best/%s, the best when latest/%d was saved, is gone; the best is '
                      'chosen among the best saves left.', recorded, step)
    self._running_best = self._best_of(self._best.steps)  # (older saves record nothing)

  def save_latest(self, step: int, state: Any) -> bool:
    """Saves `state` as latest `step` (False if already saved), then drops old saves."""
    best = self._running_best
    saved = self._latest.save(step, state, {'best_step': None if best is None else best[0],
                                            'best_val_acc': None if best is None else best[1],
                                            **self._layout})
    for s in sorted(self._latest.steps)[:-self.keep]:
      self._latest.delete(s)
    self._drop_old_bests()
    return saved

  def save_best(self, step: int, state: Any, val_acc: float) -> bool:
    """Keeps `state` as best if `val_acc` is at least the best so far; True if it is."""
    if self._running_best is not None and val_acc < self._running_best[1]:
      return False
    self._best.save(step, state, {'val_acc': float(val_acc)})
    self._running_best = (step, float(val_acc))
    self._drop_old_bests()
    return True

  def _drop_old_bests(self) -> None:
    # Kept: the newest two (the best and its fallback) and the best the newest latest
    # save recorded, which a resume from it falls back to.
    keep = set(sorted(self._best.steps)[-_BEST_KEEP:])
    newest = self._latest.newest()
    if newest is not None:
      keep.add(self._latest.steps[newest].meta.get('best_step'))
    for s in sorted(self._best.steps):
      if s not in keep:
        self._best.delete(s)

  def check_matches(self, target: Any) -> None:
    """Raises CheckpointError (one line) if the newest save's parameters differ in shape
    from `target`'s, e.g. weights of another architecture; before any restore."""
    for folder in (self._latest, self._best):
      if not folder.steps:
        continue
      step = folder.newest()
      # Orbax's metadata, not the raw `_METADATA` file: its `write_shape` is the slice
      # one process wrote (a multi-process save splits replicated arrays), not the shape.
      try:
        meta = ocp.StandardCheckpointHandler().metadata(
            epath.Path(folder.directory) / str(step) / 'default')
        saved = _param_shapes(dict(getattr(meta, 'tree', meta)), 'params')
      except Exception:  # noqa: BLE001 -- unreadable: restore() reports it
        continue
      wanted = _param_shapes(target, 'params')
      for path in sorted(saved.keys() | wanted.keys()):
        if saved.get(path) != wanted.get(path):
          raise CheckpointError(
              f'The checkpoint {folder.name}/{step} does not fit this config: parameter '
              f'{"/".join(path[1:])} is {saved.get(path, "absent")} there and '
              f'{wanted.get(path, "absent")} here. Use the config (and weight directories of '
              'the same architecture) the run was made with.')
      return

  def resolve(self, which: str) -> tuple[str, int]:
    """'latest' | 'best' | 'STEP' -> (folder name, step) of the newest usable save."""
    if which in ('latest', 'best'):
      step = self.latest_step() if which == 'latest' else self.best_step()
      if step is None:
        raise CheckpointError(f'No {which!r} checkpoint in {self.root}.')
      return which, step
    try:
      step = int(which)
    except ValueError:
      raise CheckpointError(
          f"checkpoint={which!r}: use 'best', 'latest' or a step number.") from None
    for folder in (self._latest, self._best):
      if step in folder.steps:
        return folder.name, step
    raise CheckpointError(
        f'No checkpoint at step {step}; saved steps: latest {sorted(self._latest.steps)}, '
        f'best {sorted(self._best.steps)}.')

  def restore(self, which: str, target: Any) -> tuple[Any, int]:
    """Restores 'latest', 'best' or a step number into the structure of `target`.

    For 'latest'/'best', a save that cannot be read is named in a warning and
    the previous one of the same folder is tried. Returns (state, step).
    """
    name, step = self.resolve(which)
    folder = self._latest if name == 'latest' else self._best
    if which == 'best':  # the best, then the others from the highest accuracy down
      candidates = sorted(folder.steps, key=lambda s: (folder.steps[s].val_acc() or -1.0, s),
                          reverse=True)
    elif which == 'latest':
      candidates = sorted(folder.steps, reverse=True)
    else:
      candidates = [step]
    failures = []
    for s in candidates:
      try:
        state = folder.restore(s, target)
      except Exception as e:  # noqa: BLE001 -- Orbax/TensorStore raise many kinds
        failures.append((s, e))
        folder.reopen()
        logging.warning('Checkpoint %s/%d cannot be read (%s)%s.', folder.name, s, _short(e),
                        '; trying the previous one' if s != candidates[-1] else '')
        continue
      # A newer save that failed while this older one reads is damaged, not mismatched.
      for bad, error in failures:
        folder.set_aside(_Step(bad, os.path.join(folder.directory, str(bad)),
                               f'unreadable: {_short(error, 100)}'))
      if failures:
        logging.warning('Using checkpoint %s/%d instead.', folder.name, s)
      return state, s
    detail = '; '.join(f'step {s}: {_short(e, 120)}' for s, e in failures)
    raise CheckpointError(
        f'No usable {name} checkpoint in {self.root} ({detail}). If the run was made with '
        'another config, use that config; if the files are damaged, move the checkpoints/ '
        'folder aside to start again.')

  def close(self) -> None:
    self._latest.close()
    self._best.close()
