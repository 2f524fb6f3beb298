"""Orchestration of the paired evaluation: every method on the test tasks, then the report.

`run_evaluation` scores every method of `config.eval.methods` on the same
test tasks and writes report.md, the figures and results.json; training
calls it at its end. `evaluate_checkpoint` restores a finished or running
workdir and evaluates it without training, optionally with other test tasks
or data, into a folder of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import time

import jax
from absl import logging

from autoaug_jax import statistics
from autoaug_jax.config import builders
from autoaug_jax.core import adaptation, evaluation, sharding
from autoaug_jax.errors import ConfigError, WorkdirError
from autoaug_jax.run import atomic_files, cluster, report
from autoaug_jax.run import setup as setup_lib
from autoaug_jax.run import workdir as workdir_lib
from autoaug_jax.run.checkpointing import Checkpoints
from autoaug_jax.run.logs import quiet_library_logs
from autoaug_jax.types import Params


def device_summary(mesh) -> str:
  """The mesh's devices and the host, as reports name them."""
  return f'{sharding.describe(mesh)}; host {platform.node()}'


def dataset_name(data) -> str:
  """A `config.data` node as reports name it: which dataset, from where, which classes."""
  if data.name == 'tfds':
    t = data.tfds
    explicit = any(t[f'{s}_classes'] for s in ('train', 'val', 'test'))
    split = 'explicit class lists' if explicit else f'class_split {t.class_split}'
    name = f'tfds {t.name} in {data.dir or "the default data_dir"} ({split})'
  elif data.name == 'mini_imagenet':
    name = f'mini_imagenet in {data.dir or "the default data_dir"}'
  else:
    name = data.name
  if data.spurious:
    # Named here, not only in the config dump: it changes what every number means,
    # and an augmenter trained with it and evaluated without must show both.
    name += (f', with a spurious support colour of strength {data.spurious:g} (each class\'s '
             'support backgrounds tinted its own colour; queries untinted)')
  return name


def _synthetic_weight_line(config, augmenter, params: Params) -> dict[str, str]:
  """The report's line on `inner.synthetic_weight`, if the run uses one."""
  weight = augmenter.synthetic_weight(params)
  if weight is None:
    return {}
  value = f'{float(jax.device_get(weight)):.4f}'
  weight_lr = config.outer.synthetic_weight_lr or config.outer.lr
  how = (f'learned (from {config.inner.synthetic_weight:g}, lr {weight_lr:g}): {value}'
         if config.inner.learn_synthetic_weight else value)
  return {'synthetic weight': f'{how} per synthetic image in the inner loss of learned/adapted '
                              '(baselines: 1, as in the paper)'}


def run_evaluation(config, params: Params, run: setup_lib.Prepared, out_dir: str, *,
                   checkpoint_label: str, extra_header: dict[str, str] | None = None,
                   trained_on: str = '') -> list:
  """Evaluates every method on `run`'s test split and writes the report into out_dir.

  `extra_header`: more lines for the report's header (overrides, config changes);
  `trained_on`: the dataset the augmenter was trained on, if not the evaluation's
  (cross-domain evaluation), named in the report next to the evaluation's.
  """
  mesh, consts, test_split = run.mesh, run.consts, run.splits['test']
  objective = run.objective
  stream = evaluation.eval_stream(config.eval.task_seed, 'test')
  scores, examples = {}, {}
  for name, (aug, p) in builders.eval_methods(config, run.setup, params).items():
    start = time.perf_counter()
    task_chunk = run.setup.task_chunk
    if isinstance(aug, adaptation.TestTimeAdapted):
      method_consts = adaptation.method_constants(consts)
      # A meta-gradient per test task: one task at a time per device, so that the
      # evaluation needs no more memory than a training step.
      task_chunk = 1
    else:
      # Baselines get no augmenter weights (the run's, e.g. Stable Diffusion's, are its own).
      method_consts = consts if aug is objective.augmenter else consts.replace(augmenter={})
    method = dataclasses.replace(objective, augmenter=aug)
    scores[name] = evaluation.evaluate(method, p, test_split, mesh, stream,
                                       config.eval.num_tasks, config.eval.batch_size,
                                       consts=method_consts, task_chunk=task_chunk)
    examples[name] = evaluation.example_augmentations(aug, p, test_split, objective.task,
                                                      stream, consts=method_consts.augmenter)
    logging.info('eval %-15s accuracy %.4f (%d tasks, %.1fs)', name, scores[name].mean(),
                 config.eval.num_tasks, time.perf_counter() - start)
    if scores[name].num_diverged:
      logging.warning('eval %s: the classifier diverged (non-finite query loss) on %d of %d '
                      'tasks; they score 0.', name, scores[name].num_diverged,
                      config.eval.num_tasks)
  accuracies = {name: s.accuracy for name, s in scores.items()}
  rows = statistics.summarize(accuracies,
                              diverged={name: s.num_diverged for name, s in scores.items()})
  t = config.task
  header = {
      # One line: the header is a markdown list.
      **({'about this run': ' '.join(config.eval.report_note.split())}
         if config.eval.report_note.strip() else {}),
      'task': f'{t.n_way}-way {t.k_shot}-shot {t.q_query}-query, {config.image_size}x'
              f'{config.image_size}, {config.inner.steps} inner SGD steps (lr {config.inner.lr}), '
              f'augmentation factor {config.augmenter.factor}',
      **({'augmenter trained on': trained_on} if trained_on else {}),
      ('evaluated on' if trained_on else 'dataset'): (
          f'{dataset_name(config.data)} (meta-test classes: {test_split.num_classes})'),
      'augmenter': f'{config.augmenter.name} (frozen={config.augmenter.frozen})' + (
          f', weights: {config.augmenter.weights or "random initialisation"}'
          if config.augmenter.name == 'resnet50' else '') + (
          f': {objective.augmenter.describe()}; SD weights: {config.augmenter.sd_dir}'
          if config.augmenter.name == 'diffusion' else ''),
      'classifier': objective.classifier.describe(),
      **_synthetic_weight_line(config, objective.augmenter, params),
      'checkpoint': checkpoint_label,
      'test tasks': f'{config.eval.num_tasks} (task seed {config.eval.task_seed})',
      **({'test-time adaptation': (
          f'adapted = learned + {config.eval.adapt_steps} {config.outer.optimizer} steps (lr '
          f'{config.eval.adapt_lr}) per test task on a pseudo-task cut from its support set')}
         if 'adapted' in accuracies else {}),
      **(extra_header or {}),
      'devices': device_summary(mesh),
      'compiled as': _layout_line(config),
  }
  if cluster.is_primary():  # every process computed the same rows; one writes them
    report.write_report(out_dir, rows, accuracies, examples, header=header,
                        config_json=config.to_json(indent=2),
                        diverged={name: s.diverged.nonzero()[0] for name, s in scores.items()})
  logging.info('Report written to %s\n%s', os.path.join(out_dir, 'report.md'),
               report.markdown_table(rows))
  return rows


def _layout_line(config) -> str:
  """The platform-dependent settings as resolved for this run ('auto' made concrete)."""
  layout = builders.resolved_layout(config)
  conv = f'classifier conv_impl {layout["classifier.conv_impl"]}'
  if config.augmenter.name == 'resnet50':
    conv += (f', augmenter conv_impl {layout["augmenter.conv_impl"]} (decoder '
             f'{layout["augmenter.decoder_impl"]})')
  return (f'{conv}; task_chunk {layout["task_chunk"]}; matmul_precision '
          f'{layout["matmul_precision"]} ({layout["platform"]})')


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
  trained_with = workdir_lib.load_workdir_config(workdir)
  config = copy.deepcopy(trained_with)
  changed = workdir_lib.apply_eval_overrides(config, overrides or {})
  # Config and data errors before any restore; frozen weights placed after it.
  mesh, splits = setup_lib.prepare_data(
      config, ('test',), checks=(lambda: _check_same_classifier(trained_with, config),))
  meta = builders.meta_setup(config)
  augmenter, params = meta.augmenter, meta.initial_params
  which, step, label = checkpoint or 'initial', None, 'initial parameters (nothing trained)'
  if augmenter.has_trainable_params(params):
    ckpts = Checkpoints(workdir, read_only=True)
    which = checkpoint
    if not which:
      which = 'best' if ckpts.best_step() is not None else 'latest'
      if which == 'latest':
        logging.info('%s has no best checkpoint (no meta-validation ran, or none is readable); '
                     'evaluating the latest.', workdir)
    target = meta.init_state(mesh)
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
  # Process 0 claims the folder; the others then find its claim and agree on the folder.
  with cluster.primary_first('eval-dir-claimed'):
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
  trained_on = dataset_name(trained_with.data)
  return run_evaluation(config, params, setup_lib.place(meta, mesh, splits), out_dir,
                        checkpoint_label=label, extra_header=extra,
                        trained_on='' if trained_on == dataset_name(config.data) else trained_on)


def _check_same_classifier(trained_with, config) -> None:
  """A pre-trained classifier's weights are not in the checkpoint: refuses a weights
  directory of another architecture than the run's (when the run's is still there)."""
  old, new = trained_with.classifier.weights, config.classifier.weights
  if config.classifier.name != 'resnet50' or old == new:
    return
  from autoaug_jax.pretrained import resnet  # transformers' config reader, only for this case
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
