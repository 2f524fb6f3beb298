"""The orchestrator: the only module with I/O, logging and checkpoints.

`train_and_evaluate(config, workdir)` runs the whole data flow: load the
class splits (dataset), check task shapes, build the augmenter, classifier and
compiled meta-step, meta-train with checkpoints, meta-validation and
metrics, then evaluate every method on the same test tasks and write the
report. `evaluate_checkpoint` restores a finished or running workdir and
evaluates it without training, optionally with other test tasks or data.
The library modules it calls are pure.

Order on start: validate the config, check the workdir (writable, a config
this run may resume), load data and check task shapes -- all before anything
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
import hashlib
import json
import os
import platform
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from autoaug_jax import (
  adaptation,
  atomic_files,
  data,
  evaluation,
  outer_step,
  report,
  sharding,
  tasks,
)
from autoaug_jax import workdir as workdir_lib
from autoaug_jax.augmenters import Augmenter, make_augmenter
from autoaug_jax.checkpointing import CheckpointError, Checkpoints
from autoaug_jax.config_schema import ConfigError, validate
from autoaug_jax.data import DataError
from autoaug_jax.metric_writers import MetricWriter, Progress, non_finite, quiet_library_logs
from autoaug_jax.resnet import WeightsError
from autoaug_jax.workdir import WorkdirError


class NonFiniteLossError(RuntimeError):
  """Meta-training produced NaN/inf; the last good checkpoint is kept."""


USER_ERRORS = (ConfigError, DataError, WeightsError, WorkdirError, CheckpointError,
               NonFiniteLossError, MemoryError)


def load_splits(config, names=('train', 'val', 'test')) -> dict[str, data.FewShotSplit]:
  """Loads the class splits and checks that the configured tasks can be drawn from each."""
  splits = {}
  for name in names:
    split = data.load_split(config.data, name, config.image_size)
    tasks.check_task_shape(split, config.task.n_way, config.task.k_shot, config.task.q_query)
    splits[name] = split
  data.clear_caches()
  return splits


def to_device(splits: dict[str, data.FewShotSplit], mesh) -> dict[str, tasks.DeviceSplit]:
  """Checks the splits fit, then replicates them over the mesh.

  Callers drop the host copies afterwards: on CPU, the device buffers are
  separate copies in the same host memory.
  """
  placed = tasks.check_memory(list(splits.values()), mesh.devices.flatten().tolist())
  logging.info('Dataset: %s; %.0f MiB of uint8 images per device.',
               ', '.join(f'{s.name} {s.num_classes} classes x {s.images.shape[0]} images'
                         for s in splits.values()), placed / 2**20)
  rep = sharding.replicated(mesh)
  return {name: tasks.to_device(split, rep) for name, split in splits.items()}


def eval_methods(config, run: outer_step.MetaSetup, params) -> dict[str, tuple[Augmenter, Any]]:
  """The augmenters compared in the paired evaluation, 'none' first.

  'random_convnet' uses the learned ConvNet's initial parameters, so
  learned-vs-random isolates what meta-training changed. If this run's
  augmenter has nothing to learn, 'learned' is replaced by the augmenter itself
  and 'adapted' (test-time adaptation of the learned one) is left out.
  """
  augmenter = run.augmenter
  methods = {}
  for name in ('none', *config.eval.methods):
    if name in methods:
      continue
    if name in ('learned', 'adapted') and not augmenter.has_trainable_params(params):
      if name == 'adapted':
        logging.info("eval: 'adapted' skipped, %r has nothing to adapt.", config.augmenter.name)
      methods.setdefault(config.augmenter.name, (augmenter, params))
      continue
    if name == 'learned':
      methods['learned'] = (augmenter, params)
    elif name == 'adapted':
      methods['adapted'] = (adaptation.from_config(config, augmenter, run.classifier, run.spec),
                            params)
    else:
      aug = make_augmenter(config.augmenter, name, n_way=config.task.n_way)
      methods[name] = (aug, outer_step.init_params(aug, run.spec, config.seed))
  return methods


def _device_summary(mesh) -> str:
  d = mesh.devices.flat[0]
  return f'{mesh.devices.size} x {d.platform} ({d.device_kind}); host {platform.node()}'


def run_evaluation(config, params, run: outer_step.MetaSetup, out_dir: str, *,
                   checkpoint_label: str, mesh, test_split: tasks.DeviceSplit | None = None,
                   consts: Any = None, extra_header: dict[str, str] | None = None) -> list:
  """Evaluates every method on the test tasks and writes the report into out_dir.

  `consts`: the frozen weights already on the mesh (placed here if None).
  `extra_header`: more lines for the report's header (overrides, config changes).
  """
  if test_split is None:
    test_split = to_device(load_splits(config, ('test',)), mesh)['test']
  if consts is None:
    consts = run.placed_constants(mesh)
  classifier, spec = run.classifier, run.spec
  stream = evaluation.eval_stream(config.eval.task_seed, 'test')
  scores, examples = {}, {}
  for name, (aug, p) in eval_methods(config, run, params).items():
    start = time.perf_counter()
    # Baselines get no augmenter weights (the run's, e.g. Stable Diffusion's, are its own).
    method_spec = spec
    if isinstance(aug, adaptation.TestTimeAdapted):
      method_consts = adaptation.method_constants(consts)
      # A meta-gradient per test task: one task at a time per device, so that the
      # evaluation needs no more memory than a training step.
      method_spec = dataclasses.replace(spec, task_chunk=1)
    else:
      method_consts = {**consts, 'augmenter': consts['augmenter'] if aug is run.augmenter else {}}
    scores[name] = evaluation.evaluate(aug, p, test_split, classifier, method_spec, mesh,
                                       stream, config.eval.num_tasks,
                                       config.eval.batch_size, consts=method_consts)
    examples[name] = evaluation.example_augmentations(aug, p, test_split, spec, stream,
                                                      consts=method_consts['augmenter'])
    logging.info('eval %-15s accuracy %.4f (%d tasks, %.1fs)', name, scores[name].mean(),
                 config.eval.num_tasks, time.perf_counter() - start)
    if scores[name].num_diverged:
      logging.warning('eval %s: the classifier diverged (non-finite query loss) on %d of %d '
                      'tasks; they score 0.', name, scores[name].num_diverged,
                      config.eval.num_tasks)
  accuracies = {name: s.accuracy for name, s in scores.items()}
  rows = evaluation.summarize(accuracies,
                              diverged={name: s.num_diverged for name, s in scores.items()})
  t = config.task
  header = {
      'task': f'{t.n_way}-way {t.k_shot}-shot {t.q_query}-query, {config.image_size}x'
              f'{config.image_size}, {config.inner.steps} inner SGD steps (lr {config.inner.lr}), '
              f'augmentation factor {config.augmenter.factor}',
      'dataset': f'{config.data.name} (meta-test classes: {test_split.num_classes})',
      'augmenter': f'{config.augmenter.name} (frozen={config.augmenter.frozen})' + (
          f', weights: {config.augmenter.weights or "random initialisation"}'
          if config.augmenter.name == 'resnet50' else '') + (
          f': {run.augmenter.describe()}; SD weights: {config.augmenter.sd_dir}'
          if config.augmenter.name == 'diffusion' else ''),
      'classifier': classifier.describe(),
      'checkpoint': checkpoint_label,
      'test tasks': f'{config.eval.num_tasks} (task seed {config.eval.task_seed})',
      **({'test-time adaptation': (
          f'adapted = learned + {config.eval.adapt_steps} {config.outer.optimizer} steps (lr '
          f'{config.eval.adapt_lr}) per test task on a pseudo-task cut from its support set')}
         if 'adapted' in accuracies else {}),
      **(extra_header or {}),
      'devices': _device_summary(mesh),
  }
  report.write_report(out_dir, rows, accuracies, examples, header=header,
                      config_json=config.to_json(indent=2),
                      diverged={name: s.diverged.nonzero()[0] for name, s in scores.items()})
  logging.info('Report written to %s\n%s', os.path.join(out_dir, 'report.md'),
               report.markdown_table(rows))
  return rows


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
  validate(config)
  mesh = sharding.mesh_from_config(config)
  sharding.check_divisible(config.meta_batch_size, mesh, 'meta_batch_size')
  val_enabled = config.eval.val_every > 0 and config.eval.val_tasks > 0
  splits = load_splits(config, ('train', 'val', 'test') if val_enabled else ('train', 'test'))
  splits = to_device(splits, mesh)  # refuses a dataset that does not fit, before any write
  changes = workdir_lib.prepare_workdir(workdir, config)

  run = outer_step.setup(config)
  augmenter, params = run.augmenter, run.initial_params
  trainable = augmenter.has_trainable_params(params)
  consts = run.placed_constants(mesh)
  state = run.init_state(mesh)
  ckpts = Checkpoints(workdir, keep=config.keep_checkpoints)
  resumed = None
  if ckpts.latest_step() is not None:
    ckpts.check_matches(state)  # weights of another architecture: one line, not a restore
    state, resumed = ckpts.restore('latest', state)
    logging.info('Resumed from %s at step %d.', workdir, resumed)
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
    workdir_lib.record_changes(workdir, step, changes)
    logging.warning('Resuming at meta-step %d with %s.', step, '; '.join(
        f'{k} {old!r} -> {new!r}' for k, old, new in changes))
  writer = MetricWriter(workdir, resume_step=resumed)
  for change in workdir_lib.read_changes(workdir):
    # Also when a kill came between recording a change and logging it.
    key = f'config/{change["key"]}'
    if change['step'] == step and not writer.has(step, key):
      writer.write_scalars(step, {key: change['new']})
  workdir_lib.write_config(workdir, config)

  if not trainable:
    logging.info('augmenter %r has nothing to train (frozen or parameter-free); evaluating only.',
                 config.augmenter.name)
  elif step < config.num_meta_steps:
    _meta_train(config, state, splits, run, consts, mesh, ckpts, writer)

  label, eval_params = 'initial parameters (nothing trained)', params
  if trainable and ckpts.latest_step() is not None:
    # Report the checkpoint meta-validation selected; without validation, the last one.
    eval_params, label = _restore_for_report(ckpts, run.init_state(mesh), val_enabled)
  history = workdir_lib.read_changes(workdir)
  rows = run_evaluation(config, eval_params, run, workdir, checkpoint_label=label,
                        mesh=mesh, test_split=splits['test'], consts=consts,
                        extra_header={'config changes during training':
                                      workdir_lib.describe_changes(history)} if history else None)
  writer.close()
  ckpts.close()
  return rows


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


def _meta_train(config, state, splits, run: outer_step.MetaSetup, consts, mesh, ckpts,
                writer) -> None:
  augmenter, classifier, spec = run.augmenter, run.classifier, run.spec
  train_split = splits['train']
  meta_step = run.meta_step(mesh, config.meta_batch_size)
  val = None
  if 'val' in splits:
    val_split = splits['val']
    val_stream = evaluation.eval_stream(config.eval.task_seed, 'val')
    val_fn = evaluation.make_eval_fn(augmenter, classifier, spec, mesh)
    val = (val_split, val_stream, val_fn)
    if int(state.step) == 0:  # logged once, at the start of training
      none = make_augmenter(config.augmenter, 'none')
      base = evaluation.evaluate(none, {}, val_split, classifier, spec, mesh, val_stream,
                                 config.eval.val_tasks, config.eval.batch_size,
                                 consts={**consts, 'augmenter': {}})
      writer.write_scalars(0, {'val/none_acc': base.mean()})
      logging.info('meta-val accuracy without augmentation: %.4f', base.mean())

  progress = Progress(config.num_meta_steps)
  logging.info('Meta-training %s from step %d to %d on %s.', config.augmenter.name,
               int(state.step), config.num_meta_steps, _device_summary(mesh))
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
      _meta_validate(config, state, step, val, run, consts, mesh, ckpts, writer)
    if step % config.checkpoint_every == 0 or last:
      writer.sync()
      ckpts.save_latest(step, state)


def _meta_validate(config, state, step, val, run: outer_step.MetaSetup, consts, mesh, ckpts,
                   writer) -> None:
  """Meta-validation at `step`: accuracy on the fixed meta-val tasks, best checkpoint, grid."""
  val_split, val_stream, val_fn = val
  scores = evaluation.evaluate(run.augmenter, state.params, val_split, run.classifier, run.spec,
                               mesh, val_stream, config.eval.val_tasks, config.eval.batch_size,
                               eval_fn=val_fn, consts=consts)
  writer.write_scalars(step, {'val/learned_acc': scores.mean(),
                              'val/learned_diverged_tasks': scores.num_diverged})
  ckpts.save_best(step, state, scores.mean())
  originals, synthetic = evaluation.example_augmentations(
      run.augmenter, state.params, val_split, run.spec, val_stream, consts=consts['augmenter'])
  writer.write_image(step, 'val/originals_vs_synthetic',
                     report.augmentation_grid({'learned': (originals, synthetic)}))
  logging.info('step %d: meta-val accuracy %.4f%s (best so far: step %s)', step, scores.mean(),
               f', {scores.num_diverged} tasks diverged' if scores.num_diverged else '',
               ckpts.best_step())


def evaluate_checkpoint(workdir: str, checkpoint: str = '', out_dir: str = '',
                        overrides: dict | None = None) -> list:
  """Restores `checkpoint` of `workdir` and evaluates it without training.

  Args:
    workdir: a training run's directory.
    checkpoint: 'best', 'latest' or a step number; '' = 'best' if the run
      has one, else 'latest'.
    out_dir: where the report goes; '' = WORKDIR/eval_<checkpoint>_step<N>[__overrides].
    overrides: dotted config keys to change for this evaluation (test tasks,
      data, inner loop, device layout, weight directories; see
      `workdir.EVAL_OVERRIDABLE`). Others are refused before anything is restored.

  Returns:
    The evaluation summary rows.
  """
  quiet_library_logs()
  config = workdir_lib.load_workdir_config(workdir)
  trained_with = workdir_lib.load_workdir_config(workdir)
  changed = workdir_lib.apply_eval_overrides(config, overrides or {})
  validate(config)
  _check_same_classifier(trained_with, config)
  mesh = sharding.mesh_from_config(config)
  test_split = to_device(load_splits(config, ('test',)), mesh)['test']  # data errors first
  run = outer_step.setup(config)
  augmenter, params = run.augmenter, run.initial_params
  which, step, label = checkpoint or 'initial', None, 'initial parameters (nothing trained)'
  if augmenter.has_trainable_params(params):
    ckpts = Checkpoints(workdir, read_only=True)
    which = checkpoint
    if not which:
      which = 'best' if ckpts.best_step() is not None else 'latest'
      if which == 'latest':
        logging.info('%s has no best checkpoint (no meta-validation ran, or none is readable); '
                     'evaluating the latest.', workdir)
    target = run.init_state(mesh)
    ckpts.check_matches(target)
    state, step = ckpts.restore(which, target)
    params = state.params
    name = ckpts.resolve(str(step))[0] if which not in ('best', 'latest') else which
    label = f'{name} (step {step}'
    if name == 'best' and ckpts.best_val_acc(step) is not None:
      label += f', meta-val accuracy {ckpts.best_val_acc(step):.4f}'
    label += ')'
    ckpts.close()
  settings = {'checkpoint': label, 'overrides': {k: new for k, (_, new) in changed.items()},
              'config_sha1': hashlib.sha1(config.to_json().encode()).hexdigest()}
  if out_dir:
    _claim_eval_dir(out_dir, settings)
  else:
    name = workdir_lib.eval_dirname(which, step, changed)
    out_dir = os.path.join(workdir, name)
    if not _claim_eval_dir(out_dir, settings, refuse=False):
      # The same name for other settings (the run's config.json changed since, or two
      # values that read alike in a folder name): a folder of its own.
      out_dir = os.path.join(workdir, f'{name}__{settings["config_sha1"][:8]}')
      _claim_eval_dir(out_dir, settings)
  extra = {}
  if changed:
    extra['evaluation overrides'] = '; '.join(f'{k} {old!r} -> {new!r}'
                                              for k, (old, new) in changed.items())
  history = workdir_lib.read_changes(workdir)
  if history:
    extra['config changes during training'] = workdir_lib.describe_changes(history)
  return run_evaluation(config, params, run, out_dir, checkpoint_label=label, mesh=mesh,
                        test_split=test_split, extra_header=extra)


def _check_same_classifier(trained_with, config) -> None:
  """A pre-trained classifier's weights are not in the checkpoint: refuses a weights
  directory of another architecture than the run's (when the run's is still there)."""
  old, new = trained_with.classifier.weights, config.classifier.weights
  if config.classifier.name != 'resnet50' or old == new:
    return
  from autoaug_jax import resnet  # transformers' config reader, only for this case
  if old and not os.path.isdir(os.path.expanduser(old)):
    logging.warning('classifier.weights of the run (%s) is gone; its architecture cannot be '
                    'compared with %s.', old, new)
    return
  if resnet.architecture(old) != resnet.architecture(new):
    raise ConfigError(
        f'--config.classifier.weights={new} holds another ResNet architecture than the one '
        f'the run was trained with ({old or "random ResNet-50"}); point it to the same '
        'architecture (e.g. the moved directory).')


def _claim_eval_dir(out_dir: str, settings: dict, refuse: bool = True) -> bool:
  """Marks `out_dir` as this evaluation's. False (or, with `refuse`, WorkdirError) if it
  holds another evaluation's results."""
  path = os.path.join(out_dir, 'eval_settings.json')
  try:
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      if old == json.loads(json.dumps(settings)):
        return True
      if not refuse:
        return False
      raise WorkdirError(f'{out_dir} holds the results of another evaluation; choose another '
                         '--out_dir, or leave it empty for a folder of its own.')
    os.makedirs(out_dir, exist_ok=True)
    atomic_files.write_json(path, settings)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'Cannot write the evaluation to {out_dir} ({e}); pass --out_dir=DIR '
                       'somewhere you can write.') from e
  return True
