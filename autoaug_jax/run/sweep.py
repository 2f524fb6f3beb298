"""The sweep orchestrator: runs every member and seed of a study, resumably, then aggregates.

Side effects live here (like `train.py` for one run). Order: load and check
the sweep, build and validate every run's config, check every existing
workdir holds the same config -- all before anything compiles -- then run
the runs one after another in this process (`train.train_and_evaluate`),
then write the aggregate with `aggregate.write`. In a multi-process sweep
every process runs every run together and process 0 writes the sweep's files.

Resumability comes from the runs themselves: a finished run leaves
`sweep_run.json` (written last, atomically) and is skipped; an interrupted
one has checkpoints in its workdir and `train_and_evaluate` resumes it from
the latest. Progress lines give the sweep's position and an ETA weighted by
each run's size (`sweeps.Run.cost`).
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import time

from absl import logging

from autoaug_jax.config import sweeps
from autoaug_jax.core import evaluation
from autoaug_jax.errors import USER_ERRORS, ConfigError, SweepError, WorkdirError
from autoaug_jax.run import aggregate, atomic_files, cluster, report, train
from autoaug_jax.run import workdir as workdir_lib
from autoaug_jax.run.logs import quiet_library_logs

DONE_FILE = 'sweep_run.json'


def _holds(workdir: str, config_json: dict) -> bool:
  """Whether `workdir`'s config.json is `config_json` (a parsed `to_json()`), keys added
  to the schema since it was written read as their defaults (which reproduce what the
  version that wrote it did, as for a resume)."""
  try:
    saved = workdir_lib.read_saved_config(workdir)
  except WorkdirError:
    return False
  return saved is not None and saved == workdir_lib.flatten(config_json)


def is_done(run: sweeps.Run) -> bool:
  """Finished, and with exactly this config: a run finished under other values of a
  resumable key (more meta-steps, more test tasks) is run again, which resumes it
  from its checkpoint and re-evaluates, instead of reporting stale numbers."""
  return (os.path.isfile(os.path.join(run.workdir, DONE_FILE))
          and _holds(run.workdir, json.loads(run.config.to_json())))


def _mark_done(run: sweeps.Run, seconds: float, copied_from: str = '') -> None:
  path = os.path.join(run.workdir, DONE_FILE)
  atomic_files.write_json(path, {'member': run.member.name, 'seed': run.seed,
                                 'seconds': seconds, 'overrides': list(run.member.overrides),
                                 'copied_from': copied_from}, indent=1)


def find_twin(run: sweeps.Run, root: str) -> str | None:
  """A finished workdir of another study under `root` with exactly this run's config
  (the support-size study's K = 10 run is the task-difficulty study's N = 3 run)."""
  target = json.loads(run.config.to_json())
  for path in sorted(glob.glob(os.path.join(glob.escape(root), '*', '*', 'seed*', DONE_FILE))):
    workdir = os.path.dirname(path)
    # A run that resumed with a changed learning rate holds the new one in config.json
    # but was partly trained with the old: not a twin of a run trained with the new.
    if (os.path.abspath(workdir) != os.path.abspath(run.workdir) and _holds(workdir, target)
        and not workdir_lib.read_changes(workdir)):
      return workdir
  return None


def _copy_twin(twin: str, workdir: str) -> None:
  """Copies a finished twin's workdir into place, atomically (a temporary folder
  renamed), so that an interruption leaves either nothing or the whole copy."""
  tmp = f'{workdir}.copy-tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(twin, tmp, ignore=shutil.ignore_patterns(DONE_FILE))
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  if os.path.isdir(workdir):
    os.rmdir(workdir)  # empty: checked by the caller
  os.rename(tmp, workdir)


def _last_per_key(overrides: tuple[str, ...]) -> list[str]:
  """The overrides that take effect: a key set twice (a sweep overriding a runner
  default) appears once, with its last value."""
  effective: dict[str, str] = {}
  for override in overrides:
    key = override.split('=', 1)[0]
    effective.pop(key, None)
    effective[key] = override
  return list(effective.values())


def _shown_path(path: str) -> str:
  """`path` relative to the working directory when it lies below it, so that reports
  pasted into the repository do not carry one machine's absolute paths."""
  relative = os.path.relpath(path)
  return path if relative.startswith('..') else relative


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def run_sweep(sweep_name: str, base: str, root: str, seeds: int = 1,
              extra: tuple[str, ...] = (), aggregate_only: bool = False,
              members: tuple[str, ...] = ()) -> dict[str, str]:
  """Runs (or resumes) the sweep under ROOT/<study>/ and writes its aggregate there.

  Args:
    sweep_name: a study folder of experiments/ or a sweep.json path.
    base: the base config file (`configs/*.py`, optionally `:ARG`).
    root: where the workdirs go (ROOT/<study>/<member>/seed<s>).
    seeds: augmenter-training seeds 0..seeds-1 per member.
    extra: dotted overrides applied to every member (after the sweep's defaults; a
      key the sweep varies is refused).
    aggregate_only: run nothing; aggregate the runs that have finished.
    members: run and aggregate only these members (all if empty).

  Returns:
    The aggregate's file paths.
  """
  quiet_library_logs()
  sweep = sweeps.load_sweep(sweep_name)
  # Planned over the whole sweep, then cut: a shared workdir keeps its name
  # whichever members are asked for.
  runs = sweeps.select_runs(sweeps.plan(sweep, base, root, seeds, extra), sweep, members)
  for run in runs:  # a changed sweep must not silently reuse old workdirs
    workdir_lib.check_workdir_config(run.workdir, run.config)
  unique = sweeps.distinct(runs)
  total = sum(r.cost() for r in unique)
  # Seed-major: every member at seed 0 first, so an interrupted study already has
  # one complete comparison (and its aggregate) before the extra seeds start.
  todo = sorted((r for r in unique if not is_done(r)), key=lambda r: r.seed)
  logging.info('Sweep %s: %d members x %d seeds = %d runs (%d distinct) under %s; %d finished, '
               '%d to run.', sweep.name, len({r.member for r in runs}), seeds, len(runs),
               len(unique), root, len(unique) - len(todo), len(todo))
  start, done_cost = time.perf_counter(), total - sum(r.cost() for r in todo)
  spent, ran_cost, failed = 0.0, 0.0, []
  for i, run in enumerate(todo if not aggregate_only else []):
    resumed = os.path.isdir(os.path.join(run.workdir, 'checkpoints'))
    logging.info('[%d/%d] %s/%s%s', i + 1, len(todo), sweep.name, run.label,
                 ' (resuming)' if resumed else '')
    run_start = time.perf_counter()
    twin = find_twin(run, root)
    if twin and not (os.path.isdir(run.workdir) and os.listdir(run.workdir)):
      if cluster.is_primary():
        _copy_twin(twin, run.workdir)
        _mark_done(run, 0.0, copied_from=twin)
      cluster.barrier(f'sweep-copied-{run.label}')
      done_cost += run.cost()
      logging.info('[%d/%d] %s/%s: same config as %s, finished there; copied.', i + 1,
                   len(todo), sweep.name, run.label, twin)
      continue
    try:
      train.train_and_evaluate(run.config, run.workdir)
    except USER_ERRORS as e:
      # One diverging member should not cost a night's sweep: record it, go on.
      logging.error('%s/%s failed: %s', sweep.name, run.label, e)
      failed.append(f'{run.label} ({run.workdir}): {e}')
      total -= run.cost()
      continue
    finally:
      evaluation.clear_caches()  # compiled grids hold their augmenter (SD weights) alive
    seconds = time.perf_counter() - run_start
    if cluster.is_primary():
      _mark_done(run, seconds)
    cluster.barrier(f'sweep-done-{run.label}')
    spent += seconds
    done_cost += run.cost()
    ran_cost += run.cost()
    eta = spent / ran_cost * (total - done_cost)
    logging.info('[%d/%d] %s/%s finished in %s; sweep %.0f%% done, elapsed %s, ETA %s.',
                 i + 1, len(todo), sweep.name, run.label, _clock(seconds),
                 100 * done_cost / max(total, 1e-9), _clock(time.perf_counter() - start),
                 _clock(eta))
  if failed:
    advice = ('A rerun repeats a failure exactly (runs are deterministic): change the '
              "member's overrides in the sweep file, delete its workdir, and rerun; or use a "
              'new --root.')
    listing = '\n  '.join(failed)
    if not any(is_done(r) for r in runs):
      raise SweepError(f'Every run of {sweep.name} failed. {advice}\n  {listing}')
    write_aggregate(sweep, runs, base, root, seeds, extra)
    results = os.path.join(root, sweep.name, 'results.md')
    raise SweepError(f'{len(failed)} run(s) of {sweep.name} failed; the aggregate at '
                     f'{results} leaves them out. {advice}\n  {listing}')
  return write_aggregate(sweep, runs, base, root, seeds, extra)


def write_aggregate(sweep: sweeps.Sweep, runs: list[sweeps.Run], base: str, root: str,
                    seeds: int, extra: tuple[str, ...]) -> dict[str, str]:
  """Aggregates the finished runs into ROOT/<study>/ (results.md, deltas.png, ...).

  Process 0 writes it; the other processes of a multi-process sweep return {}.
  """
  if not cluster.is_primary():
    return {}
  rows, contrasts, member_examples, missing, seconds, seen = [], [], {}, [], {}, set()
  devices = ''  # as the runs' reports name them
  for member in dict.fromkeys(r.member for r in runs):
    results = []
    for run in (r for r in runs if r.member == member):
      if not is_done(run):
        missing.append(run.label)
        continue
      with open(os.path.join(run.workdir, 'results.json')) as f:
        results.append(json.load(f))
      devices = devices or results[-1].get('header', {}).get('devices', '')
      if run.workdir in seen:  # a workdir shared with an earlier member
        continue
      seen.add(run.workdir)
      with open(os.path.join(run.workdir, DONE_FILE)) as f:
        done = json.load(f)
      if not done.get('copied_from'):
        seconds[run.label] = done['seconds']
      examples = os.path.join(run.workdir, 'examples.npz')
      if member.name not in member_examples and os.path.isfile(examples):
        member_examples[member.name] = report.load_examples(examples)
    if results:
      try:
        rows += aggregate.aggregate_member(member.name, member.x, member.panel, results)
        contrasts += aggregate.contrast_rows(member.name, member.x, member.panel, results)
      except ValueError as e:
        raise ConfigError(f'{sweep.path}: {e}') from e
  if not rows:
    raise WorkdirError(f'No run of sweep {sweep.name} has finished under {root} with '
                             'this config; run the sweep without --aggregate_only first.')
  first = next(r for r in runs if is_done(r))
  header = {
      'sweep': f'{_shown_path(sweep.path)} ({len(sweep.members)} members)',
      'base config': base + (f' with {" ".join(extra)}' if extra else ''),
      'common overrides': ' '.join(_last_per_key((*sweeps.SWEEP_DEFAULTS, *sweep.overrides))),
      'members': '; '.join(f'{m.name}: {" ".join(m.overrides) or "(base)"}'
                           for m in dict.fromkeys(r.member for r in runs)),
      'seeds': f'{seeds} augmenter-training seeds (config.seed 0..{seeds - 1})',
      'test tasks': f'{first.config.eval.num_tasks} per run (task seed '
                    f'{first.config.eval.task_seed}), the same for every member and seed',
      'run time': f'{_clock(sum(seconds.values()))} for the finished runs ('
                  + ', '.join(f'{k} {_clock(v)}' for k, v in seconds.items())
                  + f'), on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()}; '
                  + f'devices: {devices or "unknown"})',
  }
  if missing:
    header['not finished'] = ', '.join(missing)
    logging.warning('Aggregating without unfinished runs: %s', ', '.join(missing))
  paths = aggregate.write(os.path.join(root, sweep.name), rows, member_examples,
                          title=sweep.title, x_label=sweep.x_label, header=header,
                          contrasts=contrasts)
  logging.info('Sweep aggregate written to %s\n%s', paths['results.md'],
               aggregate.markdown_table(rows, sweep.x_label))
  return paths
