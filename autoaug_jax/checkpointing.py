"""Orbax checkpoints of the meta-training state: the latest ones and the best on meta-val.

Used only by the orchestrators (`train.py`). Two folders under
`WORKDIR/checkpoints/`: `latest/` keeps the last `keep` saves (resume reads
it) and `best/` the last two saves that were the best on meta-validation
so far (the final report evaluates the newest; the older one is its
fallback). What makes a kill at any moment harmless:

- Orbax writes a save into a temporary folder and renames it when complete;
  temporary folders of killed saves are removed when a run reopens the
  workdir. After the rename a manifest (`autoaug_manifest.json`: every file's
  size, and a best save's meta-val accuracy) is written into the folder
  atomically. A folder whose files disagree with its manifest (truncated,
  half-deleted) is damaged: a warning names it, a writable opening moves it
  to `checkpoints/damaged/`, and the previous good save is used instead.
  Folders without a manifest (a kill between rename and manifest, or an
  older version of this module) are judged by whether Orbax can read them.
- Saving a step that is already saved is a no-op: a resumed run recomputes
  that step's state bit for bit, so the saved copy already is it.
- A state is offered as best at each meta-validation and kept if its accuracy
  is at least the best so far (ties go to the later step), a decision that
  depends only on the saved bests, so it is the same after any resume.

Restores are shaped by an abstract target built from a freshly initialised
state, so a checkpoint written on 4 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

MANIFEST = 'autoaug_manifest.json'
_BEST_KEEP = 2


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable or does not fit this config; the message says
  which and what to do."""


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


@dataclasses.dataclass
class _Step:
  step: int
  path: str
  manifest: dict | None  # None: written before manifests, or killed before it was written
  problem: str | None = None  # why the folder is unusable, None if it looks intact


def _inspect(path: str, step: int) -> _Step:
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.exists(manifest_path):
    return _Step(step, path, None)
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
    expected = manifest['files']
  except (OSError, ValueError, KeyError, TypeError) as e:
    return _Step(step, path, None, f'its manifest is unreadable ({_short(e)})')
  found = _files(path)
  for rel, size in sorted(expected.items()):
    if rel not in found:
      return _Step(step, path, manifest, f'{rel} is missing')
    if found[rel] != size:
      return _Step(step, path, manifest, f'{rel} has {found[rel]} bytes, {size} were written')
  return _Step(step, path, manifest)


def _legacy_val_acc(path: str) -> float | None:
  """Meta-val accuracy of a best save written before manifests (Orbax's metrics item)."""
  try:
    with open(os.path.join(path, 'metrics', 'metrics')) as f:
      return float(json.load(f)['val_acc'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


class _Folder:
  """One Orbax manager and what this module knows about its step folders."""

  def __init__(self, root: str, name: str, keep: int, read_only: bool):
    self.name, self.read_only = name, read_only
    self.directory = os.path.join(root, name)
    self._damaged_root = os.path.join(root, 'damaged')
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, read_only=read_only,
        create=not read_only, cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)
    self.steps: dict[int, _Step] = {}
    self.refresh()

  def reopen(self) -> None:
    """A fresh manager: a failed restore can leave Orbax's guess of the item layout
    (taken from the unreadable folder) behind, which would fail the next one too."""
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def refresh(self) -> None:
    self.manager.reload()
    self.steps = {}
    for step in self.manager.all_steps():
      info = _inspect(os.path.join(self.directory, str(step)), step)
      if info.problem:
        self.set_aside(info)
      else:
        self.steps[step] = info

  def set_aside(self, info: _Step) -> None:
    """Warns about a damaged step folder; a writable folder moves it to checkpoints/damaged/."""
    where = os.path.join(self.name, str(info.step))
    if self.read_only:
      logging.warning('Checkpoint %s is damaged (%s); it is skipped.', info.path, info.problem)
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

  def latest(self) -> int | None:
    return max(self.steps) if self.steps else None

  def save(self, step: int, state: Any, extra: dict | None = None) -> bool:
    if step in self.manager.all_steps():
      return False  # already saved by the run this one resumes: the same state
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    path = os.path.join(self.directory, str(step))
    manifest = {'step': step, 'files': _files(path), **(extra or {})}
    if jax.process_index() == 0:
      tmp = os.path.join(path, MANIFEST + '.tmp')
      with open(tmp, 'w') as f:
        json.dump(manifest, f)
      os.replace(tmp, os.path.join(path, MANIFEST))
    self.manager.reload()  # Orbax may have deleted old steps (max_to_keep)
    kept = set(self.manager.all_steps())
    self.steps = {s: i for s, i in self.steps.items() if s in kept}
    self.steps[step] = _Step(step, path, manifest)
    return True

  def restore(self, step: int, target: Any) -> Any:
    return self.manager.restore(step, args=ocp.args.StandardRestore(_abstract(target)))

  def close(self) -> None:
    self.manager.close()


class Checkpoints:
  """The latest/best checkpoints of one workdir.

  `read_only=True` (evaluation) never writes: damaged folders are skipped
  with a warning instead of being moved.
  """

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    # Orbax's TensorStore paths must be absolute; users pass relative workdirs.
    self.root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    if read_only and not os.path.isdir(self.root):
      raise CheckpointError(f'{workdir} has no checkpoints/ folder: no meta-training step was '
                            'saved there.')
    self._latest = _Folder(self.root, 'latest', keep, read_only)
    self._best = _Folder(self.root, 'best', _BEST_KEEP, read_only)

  def latest_step(self) -> int | None:
    return self._latest.latest()

  def best_step(self) -> int | None:
    return self._best.latest()

  def best_val_acc(self, step: int | None = None) -> float | None:
    """Meta-val accuracy of best save `step` (default: the newest)."""
    step = self.best_step() if step is None else step
    if step is None or step not in self._best.steps:
      return None
    info = self._best.steps[step]
    if info.manifest is not None and 'val_acc' in info.manifest:
      return float(info.manifest['val_acc'])
    return _legacy_val_acc(info.path)

  def save_latest(self, step: int, state: Any) -> bool:
    """Saves `state` as latest `step`; False if that step was already saved."""
    return self._latest.save(step, state)

  def save_best(self, step: int, state: Any, val_acc: float) -> bool:
    """Keeps `state` as best if `val_acc` is at least the best so far; True if it is the
    best (saved now or by the run this one resumes)."""
    if step in self._best.steps:
      return True
    best = self.best_val_acc()
    if best is not None and val_acc < best:
      return False
    self._best.save(step, state, {'val_acc': float(val_acc)})
    return True

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
    candidates = (sorted((s for s in folder.steps if s <= step), reverse=True)
                  if which in ('latest', 'best') else [step])
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
        folder.set_aside(_Step(bad, os.path.join(folder.directory, str(bad)), None,
                               f'unreadable: {_short(error, 100)}'))
        folder.steps.pop(bad, None)
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
