"""Sweeps as data: a study is a list of members, each a list of dotted config overrides.

A sweep file (`experiments/<study>/sweep.json`) holds

  {"title": "...", "x_label": "...",
   "overrides": ["task.n_way=3", ...],            # every member
   "members": [{"name": "k1", "x": "1", "overrides": ["task.k_shot=1"]},
               {"name": "resnet_k1", "x": "1", "panel": "ResNet-50 classifier",
                "overrides": [...]}, ...]}

`x` is the member's position on the figure's horizontal axis and `panel`
(optional) splits the figure into one panel per value (a study crossing two
factors). Overrides are applied, in order, over a base config file:
`SWEEP_DEFAULTS`, the sweep's common overrides, the member's own, the runner's
`--override`s (which may not set a key the sweep sets: that would erase what
the study varies), then the seed. Nothing runs here: reading, building and
checking configs; `run/sweep.py` runs them.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re

import ml_collections

from autoaug_jax.config.schema import EVAL_METHODS, config_from_file
from autoaug_jax.config.validation import validate
from autoaug_jax.errors import ConfigError, WeightsError

# Every study evaluates all the paper's baselines, the learned augmenter and its
# test-time adaptation on the same test tasks.
SWEEP_DEFAULTS = (f'eval.methods={",".join(EVAL_METHODS)}',)

# The repository's experiments/ folder (this file is autoaug_jax/config/sweeps.py).
EXPERIMENTS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'experiments')
_NAME = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]*$')  # a folder name, not '.' or '..'


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  x: str
  panel: str
  overrides: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  title: str
  x_label: str
  overrides: tuple[str, ...]
  members: tuple[Member, ...]
  path: str

  @property
  def panels(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.panel for m in self.members))


def available_sweeps(root: str = EXPERIMENTS_DIR) -> list[str]:
  if not os.path.isdir(root):
    return []
  return sorted(d for d in os.listdir(root)
                if os.path.isfile(os.path.join(root, d, 'sweep.json')))


def sweep_path(name_or_path: str, root: str = EXPERIMENTS_DIR) -> str:
  """A study name (a folder of `root`) or a path to a sweep.json -> the file's path."""
  if name_or_path.endswith('.json'):
    path = os.path.expanduser(name_or_path)
  else:
    path = os.path.join(root, name_or_path, 'sweep.json')
  if not os.path.isfile(path):
    raise ConfigError(f'--sweep={name_or_path}: no such sweep ({path} does not exist). '
                      f'Choose one of {available_sweeps(root)} or give a sweep.json path.')
  return path


def load_sweep(name_or_path: str, root: str = EXPERIMENTS_DIR) -> Sweep:
  """Reads and checks a sweep file; raises ConfigError naming the file and the problem."""
  path = sweep_path(name_or_path, root)
  try:
    with open(path) as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e}); fix the file.') from e

  def need(cond, what):
    if not cond:
      raise ConfigError(f'{path}: {what}.')

  need(isinstance(raw, dict), 'the file must hold one JSON object')
  unknown = set(raw) - {'title', 'x_label', 'overrides', 'members'}
  need(not unknown, f'unknown keys {sorted(unknown)}; allowed: title, x_label, overrides, '
                    'members')
  need(isinstance(raw.get('members'), list) and raw['members'],
       '"members" must be a non-empty list')
  members = []
  for i, m in enumerate(raw['members']):
    need(isinstance(m, dict) and isinstance(m.get('name'), str) and _NAME.match(m['name']),
         f'member {i} needs a "name" of letters, digits, "_", "-" or "." not starting with '
         '"." or "-" (it names a folder)')
    bad = set(m) - {'name', 'x', 'panel', 'overrides'}
    need(not bad, f'member {m["name"]!r}: unknown keys {sorted(bad)}')
    overrides = m.get('overrides', [])
    need(isinstance(overrides, list) and all(isinstance(o, str) for o in overrides),
         f'member {m["name"]!r}: "overrides" must be a list of "key=value" strings')
    members.append(Member(name=m['name'], x=str(m.get('x', m['name'])),
                          panel=str(m.get('panel', '')), overrides=tuple(overrides)))
  names = [m.name for m in members]
  need(len(set(names)) == len(names), f'member names repeat: {names}')
  common = raw.get('overrides', [])
  need(isinstance(common, list) and all(isinstance(o, str) for o in common),
       '"overrides" must be a list of "key=value" strings')
  study = (os.path.basename(os.path.dirname(path)) if os.path.basename(path) == 'sweep.json'
           else os.path.splitext(os.path.basename(path))[0])
  return Sweep(name=study, title=str(raw.get('title', study)),
               x_label=str(raw.get('x_label', '')), overrides=tuple(common),
               members=tuple(members), path=path)


def _parse_value(text: str, current, field_type: type | None = None):
  """`text` as the type of the field's current value (absl's --config.KEY=VALUE rules,
  plus comma lists for tuples). A field of type `object` (e.g. task_chunk: an int or
  'auto') takes a Python literal, else the text."""
  if field_type is object:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ValueError(f'{text!r} is not a boolean (true/false)')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, tuple):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None
    if isinstance(value, str):  # one quoted element
      value = [value]
    elif not isinstance(value, (tuple, list)):
      value = [v.strip() for v in text.split(',') if v.strip()] if text.strip() else []
    kind = type(current[0]) if current else None
    return tuple(_parse_value(str(v), kind()) if kind in (int, float, bool) and
                 not isinstance(v, kind) else v for v in value)
  return text


def override_key(override: str) -> str:
  """The dotted config key an override sets (`--config.` and `config.` prefixes dropped)."""
  return override.partition('=')[0].strip().removeprefix('--config.').removeprefix('config.')


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Applies one 'dotted.key=value' to a (locked) config in place."""
  key, sep, text = override_key(override), *override.partition('=')[1:]
  if not sep or not key:
    raise ConfigError(f'override {override!r} is not of the form dotted.key=value.')
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f'override {override!r}: {key!r} is not a config key (see '
                        'autoaug_jax/config/schema.py for the keys).')
    node = node[part]
  if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
    raise ConfigError(f'override {override!r}: {key!r} is not a config key (see '
                      'autoaug_jax/config/schema.py for the keys).')
  try:
    value = _parse_value(text.strip(), node[leaf], node.get_type(leaf))
  except ValueError as e:
    raise ConfigError(f'override {override!r}: {e}; {key} takes a '
                      f'{type(node[leaf]).__name__} value.') from e
  with node.unlocked():
    node[leaf] = value


def member_config(base: str, sweep: Sweep, member: Member, seed: int,
                  extra: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The config of one member and seed: base file, then overrides (see module doc)."""
  path, _, arg = base.partition(':')  # e.g. configs/combinations.py:resnet50,convnet
  config = config_from_file(path, arg or None)
  varied = {override_key(o) for o in (*sweep.overrides, *member.overrides)}
  clash = sorted(varied & {override_key(o) for o in extra})
  if clash:
    raise ConfigError(f'--override sets {clash}, which {sweep.path} sets itself; change the '
                      'sweep file (or copy it) to vary them differently.')
  for override in (*SWEEP_DEFAULTS, *sweep.overrides, *member.overrides, *extra,
                   f'seed={seed}'):
    try:
      apply_override(config, override)
    except ConfigError as e:
      raise ConfigError(f'{sweep.path}, member {member.name!r}: {e}') from e
  try:
    validate(config)
  except (ConfigError, WeightsError) as e:
    raise ConfigError(f'{sweep.path}, member {member.name!r} (seed {seed}): {e}') from e
  return config


@dataclasses.dataclass(frozen=True)
class Run:
  """One member at one seed, and where it runs."""
  member: Member
  seed: int
  workdir: str
  config: ml_collections.ConfigDict

  @property
  def label(self) -> str:
    return f'{self.member.name} seed {self.seed}'

  def cost(self) -> float:
    """Relative cost for the ETA: images through the inner loop per task."""
    t, f = self.config.task, self.config.augmenter.factor
    synthetic = f * (t.n_way if self.config.augmenter.name == 'diffusion' else t.n_way * t.k_shot)
    return float(t.n_way * t.k_shot + synthetic + t.n_way * t.q_query)


def select_runs(runs: list[Run], sweep: Sweep, names: tuple[str, ...]) -> list[Run]:
  """The runs of the members `names` (all if empty); planned over the whole sweep first,
  so that a workdir shared between members keeps the first member's name."""
  if not names:
    return runs
  known = [m.name for m in sweep.members]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ConfigError(f'--members: {unknown} not in {sweep.path}; its members are {known}.')
  return [r for r in runs if r.member.name in names]


def distinct(runs: list[Run]) -> list[Run]:
  """One run per workdir, in order of first appearance."""
  first = {}
  for run in runs:
    first.setdefault(run.workdir, run)
  return list(first.values())


def plan(sweep: Sweep, base: str, root: str, seeds: int,
         extra: tuple[str, ...] = ()) -> list[Run]:
  """Every (member, seed) of the sweep with its config and workdir
  ROOT/<study>/<member>/seed<s>; all configs are built and checked here, so a
  bad override stops the sweep before anything runs."""
  if seeds < 1:
    raise ConfigError(f'--seeds={seeds} must be at least 1.')
  if not os.path.isfile(base.partition(':')[0]):
    raise ConfigError(f'--base={base}: no such config file; give a configs/*.py path, e.g. '
                      'configs/sweep_cpu.py.')
  runs, workdirs = [], {}
  for member in sweep.members:
    for seed in range(seeds):
      config = member_config(base, sweep, member, seed, extra)
      # Members with the same config (a study's default point, repeated in each
      # panel) share the first one's workdir and run once.
      workdir = workdirs.setdefault(
          config.to_json(), os.path.join(root, sweep.name, member.name, f'seed{seed}'))
      runs.append(Run(member=member, seed=seed, workdir=workdir, config=config))
  test_tasks = {(r.config.eval.task_seed, r.config.eval.num_tasks) for r in runs}
  if len(test_tasks) > 1:
    raise ConfigError(f'{sweep.path}: members are evaluated on different test tasks '
                      f'(eval.task_seed, eval.num_tasks) {sorted(test_tasks)}; a study compares '
                      'them on the same tasks, so set these keys for the whole sweep.')
  devices = {r.config.num_cpu_devices for r in runs}
  if len(devices) > 1:
    raise ConfigError(f'{sweep.path}: members ask for different num_cpu_devices {devices}; '
                      'one process runs them all, so they must agree.')
  return runs
