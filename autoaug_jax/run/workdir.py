"""A run directory's config: what a resume may change, what an evaluation may override.

Used by the orchestrators (`train.py`, `evaluate.py`, `sweep.py`). A workdir holds the
config its run was started with (`config.json`). Running again on the same
workdir resumes, and only keys that leave the meta-training trajectory
alone may differ (`RESUMABLE_KEYS`), plus the learning rates and clipping a
user lowers to recover from a non-finite loss (`RECOVERY_KEYS`), whose
changes are kept in `config_changes.jsonl` with the step they took effect at.
Evaluating a workdir again may override what does not change the trained
parameters' shapes or the augmenter/classifier architecture
(`EVAL_OVERRIDABLE`); each such evaluation writes to its own folder, named
after the checkpoint and the overrides.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import ml_collections

from autoaug_jax.config.schema import base_config
from autoaug_jax.errors import ConfigError, WorkdirError
from autoaug_jax.run import atomic_files, cluster

CONFIG_FILE = 'config.json'
CHANGES_FILE = 'config_changes.jsonl'

# Keys that may change between a run and its resumption: they do not change
# the mathematics of the meta-training trajectory. (Device layout and remat do
# change float32 rounding, which the 20-step inner loop can amplify to ~1e-3
# in a task's query loss; an unchanged config resumes bit for bit.)
RESUMABLE_KEYS = ('num_meta_steps', 'eval.', 'log_every', 'checkpoint_every',
                  'keep_checkpoints', 'num_devices', 'num_cpu_devices', 'data.dir',
                  'inner.remat', 'task_chunk', 'classifier.embed_once',
                  # Memory/speed knobs of the diffusion augmenter, not its numbers,
                  # and where its weights live (read at start-up only).
                  'augmenter.remat', 'augmenter.efficient_attention', 'augmenter.sd_dir',
                  'augmenter.prompt_net.weights')
# Keys a user changes to get past a non-finite loss. They do change the
# trajectory from the resumed step on, so each change is recorded.
RECOVERY_KEYS = ('outer.lr', 'outer.grad_clip', 'inner.lr')

# Keys an evaluation of a trained run may override: the test tasks and data
# (cross-domain evaluation), the inner loop that scores an augmenter, the
# baselines' settings, device layout and where frozen weights live. Anything
# else changes parameter shapes, the augmenter or classifier architecture, or
# has no effect on an evaluation, and is refused.
EVAL_OVERRIDABLE = ('eval.', 'task.', 'data.', 'inner.', 'augmenter.fixed.', 'num_devices',
                    'num_cpu_devices', 'task_chunk', 'classifier.embed_once',
                    'classifier.conv_impl', 'classifier.weights', 'augmenter.conv_impl',
                    'augmenter.remat', 'augmenter.efficient_attention', 'augmenter.weights',
                    'augmenter.sd_dir', 'augmenter.prompt_net.weights')
# Under an allowed prefix, but part of the trained augmenter (its parameters).
EVAL_FIXED = ('inner.synthetic_weight', 'inner.learn_synthetic_weight')

# Keys every config.json has had since the first release. Keys added later
# may be absent from older workdirs and read as their defaults, which
# reproduce what those versions did; a missing required key means the file
# is damaged or not ours.
REQUIRED_KEYS = (
    'seed', 'image_size', 'data.name', 'data.dir', 'data.images_per_class', 'data.spurious',
    'task.n_way', 'task.k_shot', 'task.q_query', 'classifier.name', 'classifier.widths',
    'classifier.hidden', 'classifier.conv_impl', 'inner.steps', 'inner.lr', 'inner.remat',
    'augmenter.name', 'augmenter.factor', 'augmenter.frozen', 'augmenter.noise_std',
    'augmenter.latent_channels', 'meta_batch_size', 'num_meta_steps', 'outer.optimizer',
    'outer.lr', 'outer.grad_clip', 'eval.num_tasks', 'eval.task_seed', 'eval.batch_size',
    'eval.methods', 'eval.val_every', 'eval.val_tasks', 'log_every', 'checkpoint_every',
    'keep_checkpoints', 'num_devices')


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return flatten(json.loads(config.to_json()))


def _some(keys: list[str]) -> str:
  return repr(keys[0]) + (f' (and {len(keys) - 1} more)' if len(keys) > 1 else '')


def read_saved_config(workdir: str) -> dict[str, Any] | None:
  """The flat config.json of `workdir` with later-added keys filled in, or None if absent.

  Raises WorkdirError (one line) for an unreadable file, a key this version
  does not know, or a missing required key.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = flatten(json.load(f))
  except (OSError, ValueError, AttributeError) as e:
    raise WorkdirError(f'{path} cannot be read ({" ".join(str(e).split())}). Restore it from '
                       'a copy, or use a new --workdir.') from e
  defaults = _flat(base_config())
  unknown = sorted(set(saved) - set(defaults))
  if unknown:
    raise WorkdirError(
        f'{path} has key {_some(unknown)}, which this version of autoaug_jax does not know '
        '(written by another version?). Use the version that wrote it, or a new --workdir.')
  missing = [k for k in REQUIRED_KEYS if k not in saved]
  if missing:
    raise WorkdirError(
        f'{path} lacks key {_some(missing)}: the file is damaged or not from autoaug_jax. '
        'Restore it from a copy, or use a new --workdir.')
  return {**defaults, **saved}


def config_changes(workdir: str, config: ml_collections.ConfigDict
                   ) -> list[tuple[str, Any, Any]]:
  """The RECOVERY_KEYS that `config` changes against the workdir's config.json, as
  (key, old, new); raises ConfigError if it changes any key that is not resumable."""
  old = read_saved_config(workdir)
  if old is None:
    return []
  new = _flat(config)
  changed = sorted(k for k in new if old.get(k) != new[k])
  refused = [k for k in changed if not k.startswith(RESUMABLE_KEYS + RECOVERY_KEYS)]
  if refused:
    detail = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in refused[:6])
    raise ConfigError(
        f'{workdir} holds a run with a different config ({detail}). Resume it with the '
        f'same values, or use a new --workdir. (Resumable changes: {", ".join(RECOVERY_KEYS)}, '
        'eval.*, num_meta_steps, logging, checkpointing and device layout.)')
  return [(k, old[k], new[k]) for k in changed if k.startswith(RECOVERY_KEYS)]


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (nothing is written) if `workdir` holds a run that `config`
  cannot resume."""
  config_changes(workdir, config)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict
                    ) -> list[tuple[str, Any, Any]]:
  """Creates the workdir and checks it can hold this run; returns the recovery-key
  changes against a previous run in it (`config_changes`). Writes nothing else.

  In a multi-process run process 0 creates and cleans it, and every process
  checks that it sees the same directory (`cluster.check_shared_directory`).
  """
  with cluster.primary_first('workdir-created'):
    if cluster.is_primary():
      try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
        with open(probe, 'w') as f:
          f.write('ok')
        os.remove(probe)
      except OSError as e:
        raise WorkdirError(f'Cannot write to --workdir={workdir} ({e.strerror or e}); '
                           'choose a directory you can write to.') from e
  cluster.check_shared_directory(workdir, '--workdir')
  changes = config_changes(workdir, config)
  cluster.barrier('workdir-config-read')  # before process 0 rewrites anything
  if cluster.is_primary():
    for name in os.listdir(workdir):  # left by a kill inside an atomic write
      if atomic_files.is_leftover(name) and os.path.isfile(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
  return changes


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  atomic_files.write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()))


def record_changes(workdir: str, step: int, changes: list[tuple[str, Any, Any]]) -> None:
  """Appends recovery-key changes, effective from meta-step `step`, to config_changes.jsonl
  (once: a rerun after a kill that came before config.json was rewritten finds the same
  change again)."""
  path = os.path.join(workdir, CHANGES_FILE)
  known = read_changes(workdir)
  entries = [e for key, old, new in changes
             if (e := {'step': int(step), 'key': key, 'old': old, 'new': new}) not in known]
  if not entries:
    return
  torn = False
  if os.path.exists(path) and os.path.getsize(path):
    with open(path, 'rb') as f:
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b'\n'
  with open(path, 'a') as f:
    f.write('\n' if torn else '')
    f.writelines(json.dumps(e) + '\n' for e in entries)
    f.flush()
    os.fsync(f.fileno())


def read_changes(workdir: str) -> list[dict]:
  """The recorded recovery-key changes, oldest first (a torn last line is ignored)."""
  path = os.path.join(workdir, CHANGES_FILE)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except ValueError:
        continue
  return out


def describe_changes(changes: list[dict]) -> str:
  return '; '.join(f'{c["key"]} {c["old"]!r} -> {c["new"]!r} from meta-step {c["step"]}'
                   for c in changes)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was started with (its config.json), unlocked."""
  saved = read_saved_config(workdir)
  if saved is None:
    raise WorkdirError(f'{workdir} has no {CONFIG_FILE}: not an autoaug_jax workdir. Pass the '
                       '--workdir of a training run.')
  config = base_config()
  for key, value in saved.items():
    # JSON turned tuples into lists; the schema's tuple fields want tuples back.
    try:
      config.update_from_flattened_dict({key: tuple(value) if isinstance(value, list) else value})
    except (TypeError, ValueError) as e:
      raise WorkdirError(f'{os.path.join(workdir, CONFIG_FILE)}: {key}={value!r} has the wrong '
                         f'type ({e}). Restore the file from a copy, or use a new --workdir.'
                         ) from e
  return config


def _allowed() -> str:
  return ', '.join(k + '*' if k.endswith('.') else k for k in EVAL_OVERRIDABLE)


def apply_eval_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                         ) -> dict[str, tuple[Any, Any]]:
  """Applies evaluation overrides to `config` in place; returns {key: (old, new)} for those
  that change a value. Raises ConfigError, before anything is restored, for a key that
  may not change at evaluation."""
  refused = sorted(k for k in overrides
                   if not k.startswith(EVAL_OVERRIDABLE) or k in EVAL_FIXED)
  if refused:
    raise ConfigError(
        f'--config.{refused[0]} cannot be overridden when evaluating a trained run: it would '
        'change the trained parameters\' shapes or the augmenter/classifier architecture, or '
        f'has no effect on evaluation. Allowed: {_allowed()} (not {", ".join(EVAL_FIXED)}).')
  old = _flat(config)
  config.update_from_flattened_dict(dict(overrides))
  new = _flat(config)
  return {k: (old[k], new[k]) for k in sorted(overrides) if old.get(k) != new.get(k)}


def _slug(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    value = ','.join(map(str, value))
  return re.sub(r'[^A-Za-z0-9.,=+-]+', '_', str(value)).strip('_') or '_'


def eval_dirname(which: str, step: int | None, overrides: dict[str, tuple[Any, Any]]) -> str:
  """`eval_<checkpoint>[_step<N>][__key=value...]`: one folder per checkpoint and settings."""
  name = f'eval_{which}' + (f'_step{step}' if step is not None and which != str(step) else '')
  if overrides:
    name += '__' + '__'.join(f'{k}={_slug(new)}' for k, (_, new) in sorted(overrides.items()))
  if len(name) > 150:  # long values (paths, lists): keep it readable, make it unique
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:130]}..{digest}'
  return name
