"""The training orchestrator: one run, from config to report, resumable after a kill anywhere.

`train_and_evaluate(config, workdir)` runs the whole data flow: the setup
path (`setup.py`: config, mesh, data, then the run's pieces), the workdir
(`workdir.py`: a config this run may resume), meta-training with
checkpoints (`checkpointing.py`), meta-validation and metrics
(`metric_writers.py`), then the paired evaluation and report
(`evaluate.py`). Everything a run writes (workdir, logs, metrics,
checkpoints, reports) is written by this package (`run/`). Below it, the core
is pure; the data and model-loading layers read their files (datasets,
weights), and write only the glyph dataset's render cache (and
`data.prepare`, its own entry point, the prepared MiniImagenet).

Order on start: validate the config, load data and check task shapes, check
the workdir (writable, a config this run may resume) -- all before anything
compiles, so user errors cost seconds. Resume order: the workdir's newest
readable latest checkpoint, else a fresh init.

A kill at any moment resumes exactly (the same parameters, best checkpoint
and results as an uninterrupted run), because everything of meta-step s is
written before its latest checkpoint: its metrics lines, then its
meta-validation and best checkpoint, then the latest checkpoint. A resumed
run restarts after the latest checkpoint, drops metrics lines logged after it,
recomputes the same steps bit for bit and skips saves that already exist. A
run killed after its last checkpoint redoes only the final evaluation.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from autoaug_jax.config import builders
from autoaug_jax.core import evaluation
from autoaug_jax.errors import CheckpointError, ConfigError, NonFiniteLossError
from autoaug_jax.run import cluster, figures
from autoaug_jax.run import setup as setup_lib
from autoaug_jax.run import workdir as workdir_lib
from autoaug_jax.run.checkpointing import Checkpoints
from autoaug_jax.run.evaluate import device_summary, run_evaluation
from autoaug_jax.run.logs import quiet_library_logs
from autoaug_jax.run.metric_writers import MetricWriter, Progress, non_finite


def _check_finite(metrics: dict[str, float], step: int, ckpts: Checkpoints,
                  grad_clip: float) -> None:
  bad = non_finite(metrics)
  if bad:
    last = ckpts.latest_step()
    where = (f'the last good checkpoint is step {last}' if last is not None else
             'no checkpoint was saved yet, so the rerun starts from scratch')
    clip = (f'a smaller --config.outer.grad_clip (now {grad_clip})' if grad_clip > 0 else
            'gradient clipping, e.g. --config.outer.grad_clip=1.0')
    raise NonFiniteLossError(
        f'Non-finite {", ".join(bad)} at meta-step {step}; nothing was saved from this step '
        f'({where}). Rerun the same command and --workdir with a lower --config.outer.lr or '
        f'--config.inner.lr, or {clip}: the run resumes from that checkpoint and the change '
        'is recorded in config_changes.jsonl, metrics.jsonl and the report.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list:
  """Meta-trains the configured augmenter in `workdir`, then writes WORKDIR/report.md.

  Returns the evaluation summary rows.
  """
  quiet_library_logs()
  val_enabled = config.eval.val_every > 0 and config.eval.val_tasks > 0
  # A dataset that does not fit is refused here, before any write.
  mesh, splits = setup_lib.prepare_data(
      config, ('train', 'val', 'test') if val_enabled else ('train', 'test'), training=True)
  cluster.check_same_everywhere(
      config.to_json(), 'were started with another config',
      'start every process with the same --config and --config.* overrides.')
  changes = workdir_lib.prepare_workdir(workdir, config)
  run = setup_lib.build(config, mesh, splits)
  params = run.setup.initial_params
  trainable = run.setup.augmenter.has_trainable_params(params)
  state = run.init_state()
  ckpts = Checkpoints(workdir, keep=config.keep_checkpoints, layout=_layout(mesh))
  resumed = None
  if ckpts.latest_step() is not None:
    ckpts.check_matches(state)  # weights of another architecture: one line, not a restore
    state, resumed = ckpts.restore('latest', state)
    logging.info('Resumed from %s at step %d.', workdir, resumed)
    _note_layout_change(ckpts, resumed, mesh, config.meta_batch_size)
  elif ckpts.damaged:
    raise CheckpointError(
        f'No usable checkpoint in {ckpts.root}: {"; ".join(ckpts.damaged)}, moved to '
        'checkpoints/damaged/. To start this run again from scratch, use a new --workdir (or '
        'move this one aside).')
  ckpts.resume(resumed)
  step = int(state.step)
  if changes:
    if trainable and step >= config.num_meta_steps:
      raise ConfigError(
          f'{workdir} has finished its {step} meta-steps, so '
          f'{", ".join(k for k, _, _ in changes)} would change nothing but the record. Raise '
          '--config.num_meta_steps to train on with the new value, or use a new --workdir.')
    if cluster.is_primary():
      workdir_lib.record_changes(workdir, step, changes)
    logging.warning('Resuming at meta-step %d with %s.', step, '; '.join(
        f'{k} {old!r} -> {new!r}' for k, old, new in changes))
  writer = MetricWriter(workdir, resume_step=resumed, active=cluster.is_primary())
  history = workdir_lib.read_changes(workdir)
  for change in history:
    # Also when a kill came between recording a change and logging it.
    key = f'config/{change["key"]}'
    if change['step'] == step and not writer.has(step, key):
      writer.write_scalars(step, {key: change['new']})
  if cluster.is_primary():
    workdir_lib.write_config(workdir, config)

  if not trainable:
    logging.info('augmenter %r has nothing to train (frozen or parameter-free); evaluating only.',
                 config.augmenter.name)
  elif step < config.num_meta_steps:
    _meta_train(config, state, run, ckpts, writer)

  label, eval_params = 'initial parameters (nothing trained)', params
  if trainable and ckpts.latest_step() is not None:
    # Report the checkpoint meta-validation selected; without validation, the last one.
    eval_params, label = _restore_for_report(ckpts, run.init_state(), val_enabled)
  rows = run_evaluation(config, eval_params, run, workdir, checkpoint_label=label,
                        extra_header={'config changes during training':
                                      workdir_lib.describe_changes(history)} if history else None)
  writer.close()
  ckpts.close()
  return rows


def _layout(mesh) -> dict[str, int]:
  """How many processes and devices a run's meta-steps were computed on."""
  return {'process_count': jax.process_count(), 'num_devices': int(mesh.devices.size)}


def _note_layout_change(ckpts: Checkpoints, step: int, mesh, meta_batch_size: int) -> None:
  """Says so when a run resumes on another number of processes or devices.

  The state is replicated, so any layout whose devices split the meta-batch
  (checked before anything was read) continues it; a different number of
  devices sums the meta-gradient in another order, so the continuation agrees
  with an uninterrupted run to float rounding, not bit for bit.
  """
  saved, now = ckpts.layout(step), _layout(mesh)
  if saved and saved != now:
    logging.warning(
        'latest/%d was written by %s process(es) with %s device(s); resuming on %d process(es) '
        'with %d device(s), which split the meta-batch of %d evenly. The continuation agrees '
        'with an uninterrupted run to float rounding, not bit for bit.', step,
        saved.get('process_count', '?'), saved.get('num_devices', '?'), now['process_count'],
        now['num_devices'], meta_batch_size)


def _restore_for_report(ckpts: Checkpoints, target, val_enabled: bool) -> tuple[Any, str]:
  """Parameters of the best checkpoint (latest without validation) and their label."""
  if val_enabled and ckpts.best_step() is not None:
    try:
      state, step = ckpts.restore('best', target)
      return state.params, (f'best (step {step}, meta-val accuracy '
                            f'{ckpts.best_val_acc(step):.4f})')
    except CheckpointError as e:
      logging.warning('%s Reporting the latest checkpoint instead.', e)
      state, step = ckpts.restore('latest', target)
      return state.params, f'latest (step {step}; no readable best checkpoint)'
  state, step = ckpts.restore('latest', target)
  return state.params, f'latest (step {step})'


def _meta_train(config, state, run: setup_lib.Prepared, ckpts: Checkpoints,
                writer: MetricWriter) -> None:
  mesh, consts, objective = run.mesh, run.consts, run.objective
  train_split = run.splits['train']
  meta_step = run.meta_step(config.meta_batch_size)
  val = None
  if 'val' in run.splits:
    val_split = run.splits['val']
    val_stream = evaluation.eval_stream(config.eval.task_seed, 'val')
    val_fn = evaluation.make_eval_fn(objective, mesh, run.setup.task_chunk)
    val = (val_split, val_stream, val_fn)
    if int(state.step) == 0:  # logged once, at the start of training
      none = dataclasses.replace(objective, augmenter=builders.augmenter(config, 'none'))
      base = evaluation.evaluate(none, {}, val_split, mesh, val_stream,
                                 config.eval.val_tasks, config.eval.batch_size,
                                 consts=consts.replace(augmenter={}),
                                 task_chunk=run.setup.task_chunk)
      writer.write_scalars(0, {'val/none_acc': base.mean()})
      logging.info('meta-val accuracy without augmentation: %.4f', base.mean())

  progress = Progress(config.num_meta_steps)
  logging.info('Meta-training %s from step %d to %d on %s.', config.augmenter.name,
               int(state.step), config.num_meta_steps, device_summary(mesh))
  compile_start = time.perf_counter()
  while int(state.step) < config.num_meta_steps:
    state, metrics = meta_step(state, train_split, consts)
    step = int(state.step)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if compile_start is not None:
      seconds = time.perf_counter() - compile_start
      # Its own line: a resumed run's metrics.jsonl otherwise reads as an uninterrupted one.
      writer.write_scalars(step, {'perf/compile_and_first_step_s': seconds})
      logging.info('step %d done: compile + first step took %.1fs', step, seconds)
      compile_start = None
    _check_finite(metrics, step, ckpts, config.outer.grad_clip)
    last = step == config.num_meta_steps
    # Everything of step s is written before its latest checkpoint (module docstring).
    if step % config.log_every == 0 or last or step == 1:
      writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})
      progress.update(step)
    if val is not None and (step % config.eval.val_every == 0 or last):
      _meta_validate(config, state, step, val, run, ckpts, writer)
    if step % config.checkpoint_every == 0 or last:
      writer.sync()
      ckpts.save_latest(step, state)


def _meta_validate(config, state, step, val, run: setup_lib.Prepared, ckpts: Checkpoints,
                   writer: MetricWriter) -> None:
  """Meta-validation at `step`: accuracy on the fixed meta-val tasks, best checkpoint, grid."""
  val_split, val_stream, val_fn = val
  scores = evaluation.evaluate(run.objective, state.params, val_split, run.mesh, val_stream,
                               config.eval.val_tasks, config.eval.batch_size,
                               eval_fn=val_fn, consts=run.consts)
  writer.write_scalars(step, {'val/learned_acc': scores.mean(),
                              'val/learned_diverged_tasks': scores.num_diverged})
  ckpts.save_best(step, state, scores.mean())
  originals, synthetic = evaluation.example_augmentations(
      run.objective.augmenter, state.params, val_split, run.objective.task, val_stream,
      consts=run.consts.augmenter)
  writer.write_image(step, 'val/originals_vs_synthetic',
                     figures.augmentation_grid({'learned': (originals, synthetic)}))
  logging.info('step %d: meta-val accuracy %.4f%s (best so far: step %s)', step, scores.mean(),
               f', {scores.num_diverged} tasks diverged' if scores.num_diverged else '',
               ckpts.best_step())
