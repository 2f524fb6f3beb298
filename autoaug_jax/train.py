"""The orchestrator: the only module with I/O, logging and checkpoints.

`train_and_evaluate(config, workdir)` runs the whole data flow: load the
class splits (dataset), check task shapes, build the augmenter, classifier and
compiled meta-step, meta-train with checkpoints, meta-validation and
metrics, then evaluate every method on the same test tasks and write the
report. `evaluate_checkpoint` restores a finished or running workdir and
evaluates it without training. Everything it calls is pure.

Order on start: validate the config, check the workdir (writable, same
config as before), load data and check task shapes -- all before anything
compiles, so user errors cost seconds. Resume order: the workdir's latest
checkpoint, else a fresh init.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from autoaug_jax import adaptation, data, evaluation, outer_step, report, sharding, tasks
from autoaug_jax.augmenters import Augmenter, make_augmenter
from autoaug_jax.checkpointing import CheckpointError, Checkpoints
from autoaug_jax.config_schema import ConfigError, base_config, validate
from autoaug_jax.data import DataError
from autoaug_jax.metric_writers import MetricWriter, Progress, non_finite, quiet_library_logs
from autoaug_jax.resnet import WeightsError

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


class WorkdirError(RuntimeError):
  """The workdir cannot be used; the message says why and what to do."""


class NonFiniteLossError(RuntimeError):
  """Meta-training produced NaN/inf; the last good checkpoint is kept."""


USER_ERRORS = (ConfigError, DataError, WeightsError, WorkdirError, CheckpointError,
               NonFiniteLossError, MemoryError)


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if `workdir` holds a run of a config that differs in a key
  that is not in RESUMABLE_KEYS (nothing is written)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  # Keys added to the schema after the run started count as their defaults.
  defaults = _flatten(json.loads(base_config().to_json()))
  old_flat, new_flat = {**defaults, **_flatten(old)}, _flatten(json.loads(config.to_json()))
  changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                   if old_flat.get(k) != new_flat.get(k) and not k.startswith(RESUMABLE_KEYS))
  if changed:
    detail = ', '.join(f'{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}' for k in changed[:6])
    raise ConfigError(
        f'{workdir} holds a run with a different config ({detail}). Resume it with the '
        f'same values, or use a new --workdir.')


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates the workdir, refuses one holding a run of a different config, writes config.json."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f'Cannot write to --workdir={workdir} ({e.strerror or e}); '
                       'choose a directory you can write to.') from e
  check_workdir_config(workdir, config)
  path = os.path.join(workdir, 'config.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(json.loads(config.to_json()), f, indent=2)
  os.replace(tmp, path)


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
                   consts: Any = None) -> list:
  """Evaluates every method on the test tasks and writes the report into out_dir.

  `consts`: the frozen weights already on the mesh (placed here if None).
  """
  if test_split is None:
    test_split = to_device(load_splits(config, ('test',)), mesh)['test']
  if consts is None:
    consts = run.placed_constants(mesh)
  classifier, spec = run.classifier, run.spec
  stream = evaluation.eval_stream(config.eval.task_seed, 'test')
  accuracies, examples = {}, {}
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
    accuracies[name] = evaluation.evaluate(aug, p, test_split, classifier, method_spec, mesh,
                                           stream, config.eval.num_tasks,
                                           config.eval.batch_size, consts=method_consts)
    examples[name] = evaluation.example_augmentations(aug, p, test_split, spec, stream,
                                                      consts=method_consts['augmenter'])
    logging.info('eval %-15s accuracy %.4f (%d tasks, %.1fs)', name, accuracies[name].mean(),
                 config.eval.num_tasks, time.perf_counter() - start)
  rows = evaluation.summarize(accuracies)
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
      'devices': _device_summary(mesh),
  }
  report.write_report(out_dir, rows, accuracies, examples, header=header,
                      config_json=config.to_json(indent=2))
  logging.info('Report written to %s\n%s', os.path.join(out_dir, 'report.md'),
               report.markdown_table(rows))
  return rows


def _validate_step(metrics: dict[str, float], step: int, ckpts: Checkpoints) -> None:
  bad = non_finite(metrics)
  if bad:
    last = ckpts.latest_step()
    raise NonFiniteLossError(
        f'Non-finite {", ".join(bad)} at meta-step {step}; nothing was saved from this step '
        f'(last good checkpoint: {last}). Lower outer.lr or inner.lr, or set '
        'outer.grad_clip, and resume from the same workdir.')


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
  prepare_workdir(workdir, config)

  run = outer_step.setup(config)
  augmenter, params = run.augmenter, run.initial_params
  consts = run.placed_constants(mesh)
  state = run.init_state(mesh)
  ckpts = Checkpoints(workdir, keep=config.keep_checkpoints)
  if ckpts.latest_step() is not None:
    state = ckpts.restore('latest', state)
    logging.info('Resumed from %s at step %d.', workdir, int(state.step))
  writer = MetricWriter(workdir)
  writer.truncate_after(int(state.step))

  trainable = augmenter.has_trainable_params(params)
  if not trainable:
    logging.info('augmenter %r has nothing to train (frozen or parameter-free); evaluating only.',
                 config.augmenter.name)
  elif int(state.step) < config.num_meta_steps:
    _meta_train(config, state, splits, run, consts, mesh, ckpts, writer)

  # Report the checkpoint meta-validation selected; without validation, the last one.
  label = 'initial parameters (nothing trained)'
  eval_params = params
  if trainable:
    target = run.init_state(mesh)
    which = 'best' if val_enabled and ckpts.best_step() is not None else 'latest'
    if ckpts.latest_step() is not None:
      eval_params = ckpts.restore(which, target).params
      label = f'{which} (step {ckpts.resolve(which)[1]}'
      if which == 'best':
        label += f', meta-val accuracy {ckpts.best_metrics()["val_acc"]:.4f}'
      label += ')'
  rows = run_evaluation(config, eval_params, run, workdir, checkpoint_label=label,
                        mesh=mesh, test_split=splits['test'], consts=consts)
  writer.close()
  ckpts.close()
  return rows


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
    none = make_augmenter(config.augmenter, 'none')
    base = evaluation.evaluate(none, {}, val_split, classifier, spec, mesh, val_stream,
                               config.eval.val_tasks, config.eval.batch_size,
                               consts={**consts, 'augmenter': {}})
    writer.write_scalars(int(state.step), {'val/none_acc': float(base.mean())})
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
      metrics['compile_and_first_step_s'] = time.perf_counter() - compile_start
      logging.info('step %d done: compile + first step took %.1fs', step,
                   metrics['compile_and_first_step_s'])
      compile_start = None
    _validate_step(metrics, step, ckpts)
    last = step == config.num_meta_steps
    if step % config.log_every == 0 or last or 'compile_and_first_step_s' in metrics:
      writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})
      progress.update(step)
    if step % config.checkpoint_every == 0 or last:
      ckpts.save_latest(step, state)
    if val is not None and (step % config.eval.val_every == 0 or last):
      val_split, val_stream, val_fn = val
      acc = evaluation.evaluate(augmenter, state.params, val_split, classifier, spec, mesh,
                                val_stream, config.eval.val_tasks, config.eval.batch_size,
                                eval_fn=val_fn, consts=consts)
      writer.write_scalars(step, {'val/learned_acc': float(acc.mean())})
      ckpts.save_best(step, state, float(acc.mean()))
      originals, synthetic = evaluation.example_augmentations(
          augmenter, state.params, val_split, spec, val_stream, consts=consts['augmenter'])
      writer.write_image(step, 'val/originals_vs_synthetic',
                         report.augmentation_grid({'learned': (originals, synthetic)}))
      logging.info('step %d: meta-val accuracy %.4f (best so far: step %s)', step, acc.mean(),
                   ckpts.best_step())


def load_workdir_config(workdir: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The config a workdir's run was started with (its config.json), plus dotted overrides."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise WorkdirError(f'{workdir} has no config.json: not an autoaug_jax workdir. Pass the '
                       '--workdir of a training run.')
  config = base_config()
  with open(path) as f:
    saved = _flatten(json.load(f))
  saved.update(overrides or {})
  # JSON turned tuples into lists; the schema's tuple fields want tuples back.
  config.update_from_flattened_dict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
  return config


def evaluate_checkpoint(workdir: str, checkpoint: str = 'best', out_dir: str = '',
                        overrides: dict | None = None) -> list:
  """Restores `checkpoint` ('best', 'latest' or a step) of `workdir` and evaluates it."""
  quiet_library_logs()
  config = load_workdir_config(workdir, overrides)
  validate(config)
  mesh = sharding.mesh_from_config(config)
  run = outer_step.setup(config)
  augmenter, params = run.augmenter, run.initial_params
  label = 'initial parameters (nothing trained)'
  if augmenter.has_trainable_params(params):
    ckpts = Checkpoints(workdir, read_only=True)
    name, step = ckpts.resolve(checkpoint)
    params = ckpts.restore(checkpoint, run.init_state(mesh)).params
    label = f'{name} (step {step})'
    ckpts.close()
  out_dir = out_dir or os.path.join(workdir, f'eval_{checkpoint}')
  return run_evaluation(config, params, run, out_dir, checkpoint_label=label, mesh=mesh)

