r"""Benchmark of the compiled meta-step: compile time, throughput, memory, FLOPs.

  python -m autoaug_jax.benchmark --config=configs/default.py \
      [--config.image_size=128 --config.inner.remat=False ...] [--steps=5 --warmup=2]

Measures, on the config's task shape and devices:
- compile_s: lowering + XLA compilation of the meta-step;
- meta_steps_per_s / tasks_per_s: from the median of `--steps` timed steps
  after `--warmup` steps, each ended with `block_until_ready`;
- peak_memory_mb: the accelerator's peak bytes in use where the backend
  reports it, else the process's peak resident memory (CPU; includes the
  compiler and the dataset, so an upper bound); xla_temp_mb: XLA's own
  estimate of the step's temporary buffers;
- flops_per_meta_step: XLA's cost analysis. XLA counts a scan body once, so
  the step is also compiled with the inner loop fully unrolled at I = 2 and
  I = 3 inner steps and extrapolated linearly to the configured I (the
  program is affine in I from I = 2 on, to 1e-4; at I = 1 XLA drops the
  remat of the lone step); achieved_gflops = flops x meta_steps_per_s.
The last line printed is one JSON object with all of these.

With --data_only it measures the dataset instead (no meta-step): seconds to
load the three class splits, host peak RSS, and the bytes the uint8 splits
take on each device (plus the device's own bytes_in_use where reported), and
the resident memory once the host copies are dropped, as training drops them:

  python -m autoaug_jax.benchmark --config=configs/paper.py --data_only

With --abstract (diffusion augmenter only) nothing runs: the meta-step is
compiled for abstract inputs, SD-1.5's and ViT-B/32's shapes with no weights
and no data, and XLA's memory analysis of that program is reported (argument,
output, temporary bytes and their sum): the full-size memory estimate on a
machine without the checkpoint or the accelerator. On CPU it is the CPU
compiler's buffer assignment, so an estimate of what an accelerator needs:

  python -m autoaug_jax.benchmark --config=configs/diffusion.py --abstract
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from autoaug_jax import outer_step, sharding, tasks
from autoaug_jax.config_schema import ConfigError, validate, validate_diffusion
from autoaug_jax.train import USER_ERRORS, load_splits, to_device

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed meta-steps (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed meta-steps after compilation.')
_FLOPS = flags.DEFINE_boolean('flops', True, 'Count FLOPs (two extra small compiles).')
_DATA_ONLY = flags.DEFINE_boolean('data_only', False,
                                  'Measure loading and placing the dataset only.')
_ABSTRACT = flags.DEFINE_boolean('abstract', False,
                                 'Compile only, for abstract SD-1.5 inputs, and report XLA\'s '
                                 'memory analysis (augmenter.name=diffusion).')
flags.mark_flags_as_required(['config'])


def _flops(config, mesh, split, inner_steps: int,
           run: outer_step.MetaSetup | None = None) -> float:
  """XLA's FLOP count of one meta-step with `inner_steps` unrolled inner steps.

  Counted with all of a device's tasks in one vmap (task_chunk=0): the same
  arithmetic as any chunking, but with no lax.map whose body XLA would count once.
  `run` (else built from config) is reused so that weights are loaded once.
  """
  run = run or outer_step.setup(config)
  run = dataclasses.replace(run, spec=dataclasses.replace(
      run.spec, inner_steps=inner_steps, unroll=True, task_chunk=0))
  state = run.init_state(mesh)
  consts = run.placed_constants(mesh)
  compiled = run.meta_step(mesh, config.meta_batch_size).lower(state, split, consts).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The partitioned program's count is per device; tasks split evenly.
  return float(cost.get('flops', float('nan'))) * mesh.devices.size


def flop_count(config, mesh, split, run: outer_step.MetaSetup | None = None) -> float:
  """XLA's FLOPs of one meta-step at the configured inner steps (see module docstring)."""
  steps = config.inner.steps
  if steps <= 3:
    return _flops(config, mesh, split, steps, run)
  f2, f3 = _flops(config, mesh, split, 2, run), _flops(config, mesh, split, 3, run)
  return f2 + (steps - 2) * (f3 - f2)


def _peak_memory_mb() -> tuple[float, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'host peak RSS'


def _current_rss_mb() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def data_benchmark(config) -> dict:
  """Load time and memory of the configured dataset's three splits on the config's mesh."""
  validate(config)
  mesh = sharding.mesh_from_config(config)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.perf_counter()
  splits = load_splits(config)
  load_s = time.perf_counter() - start
  per_device = tasks.placed_bytes(list(splits.values()))
  placed = to_device(splits, mesh)  # checks that they fit first
  jax.block_until_ready(placed)
  summary = {k: (int(s.images.shape[0]), s.images.nbytes / 2**20) for k, s in splits.items()}
  del splits  # as training does: only the device copies stay
  gc.collect()
  stats = mesh.devices.flat[0].memory_stats() or {}
  d = mesh.devices.flat[0]
  return {
      'dataset': config.data.name,
      'image_size': config.image_size,
      'images_per_class': config.data.images_per_class,
      'images': {k: v[0] for k, v in summary.items()},
      'load_s': load_s,
      'split_mb': {k: v[1] for k, v in summary.items()},
      'per_device_mb': per_device / 2**20,
      'device_bytes_in_use_mb': stats.get('bytes_in_use', float('nan')) / 2**20,
      'host_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'host_rss_after_load_mb': _current_rss_mb(),
      'host_rss_before_load_mb': rss_before,
      'devices': f'{mesh.devices.size} x {d.platform} ({d.device_kind})',
  }


def benchmark(config, steps: int = 5, warmup: int = 2, count_flops: bool = True) -> dict:
  """Runs the measurements described in the module docstring; returns the result dict."""
  validate(config)
  mesh = sharding.mesh_from_config(config)
  sharding.check_divisible(config.meta_batch_size, mesh, 'meta_batch_size')
  split = to_device(load_splits(config, ('train',)), mesh)['train']
  run = outer_step.setup(config)
  state = run.init_state(mesh)
  consts = run.placed_constants(mesh)
  meta_step = run.meta_step(mesh, config.meta_batch_size)

  start = time.perf_counter()
  compiled = meta_step.lower(state, split, consts).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp_mb = getattr(memory, 'temp_size_in_bytes', 0) / 2**20 if memory is not None else None

  for _ in range(warmup):
    state, metrics = compiled(state, split, consts)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, split, consts)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  peak_mb, peak_kind = _peak_memory_mb()

  flops = float('nan')
  if count_flops:
    flops = flop_count(config, mesh, split, run)
  d = mesh.devices.flat[0]
  return {
      'meta_steps_per_s': 1.0 / median,
      'tasks_per_s': config.meta_batch_size / median,
      'step_time_median_s': median,
      'step_times_s': [round(t, 4) for t in times],
      'compile_s': compile_s,
      'peak_memory_mb': peak_mb,
      'peak_memory_kind': peak_kind,
      'xla_temp_mb': temp_mb,
      'flops_per_meta_step': flops,
      'achieved_gflops': flops / median / 1e9,
      'meta_loss': float(metrics['meta_loss']),
      'devices': f'{mesh.devices.size} x {d.platform} ({d.device_kind})',
      'image_size': config.image_size,
      'task': f'{config.task.n_way}-way {config.task.k_shot}-shot {config.task.q_query}-query',
      'inner_steps': config.inner.steps,
      'meta_batch_size': config.meta_batch_size,
      'factor': config.augmenter.factor,
      'remat': config.inner.remat,
      'conv_impl': config.classifier.conv_impl,
      'augmenter': config.augmenter.name,
      'augmenter_frozen': config.augmenter.frozen,
      'classifier': config.classifier.name,
      'trainable_blocks': (config.classifier.trainable_blocks
                           if config.classifier.name == 'resnet50' else None),
      'embed_once': config.classifier.embed_once,
      **({'generate_size': config.augmenter.generate_size,
          'num_inference_steps': config.augmenter.num_inference_steps,
          'augmenter_remat': config.augmenter.remat,
          'backprop_last_k': config.augmenter.backprop_last_k,
          'guidance_scale': config.augmenter.guidance_scale,
          'sd_dtype': config.augmenter.sd_dtype}
         if config.augmenter.name == 'diffusion' else {}),
  }


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def abstract_memory(config, num_train_classes: int = 64) -> dict:
  """Compiles the diffusion meta-step for abstract SD-1.5 weights, prompt network,
  state and split (`num_train_classes` x data.images_per_class images; MiniImagenet
  has 64 training classes) and returns XLA's memory analysis in MiB."""
  from autoaug_jax import stable_diffusion
  from autoaug_jax.augmenters import diffusion
  from autoaug_jax.classifiers import make_classifier

  a = config.augmenter
  if a.name != 'diffusion':
    raise ConfigError(f'--abstract compiles the diffusion augmenter with SD-1.5 shapes; '
                      f'augmenter.name={a.name!r}. Set --config.augmenter.name=diffusion.')
  if a.prompt_net.weights:
    raise ConfigError('--abstract uses ViT-B/32 shapes; leave augmenter.prompt_net.weights empty.')
  validate_diffusion(a, check_dirs=False)
  mesh = sharding.mesh_from_config(config)
  sd, weights = stable_diffusion.sd15_abstract(stable_diffusion.DTYPES[a.sd_dtype],
                                               efficient_attention=a.efficient_attention)
  augmenter = diffusion.from_models(a, config.task.n_way, sd, weights)
  spec = outer_step.TaskSpec.from_config(config)
  params = jax.eval_shape(lambda: outer_step.init_params(augmenter, spec, config.seed))
  optimizer = outer_step.make_optimizer(config.outer, augmenter, params)
  state = outer_step.MetaState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                               opt_state=jax.eval_shape(optimizer.init, params),
                               key=jax.ShapeDtypeStruct((2,), jnp.uint32))
  classifier = make_classifier(config)
  consts = {'classifier': _abstract(classifier.constants(config.seed)), 'augmenter': weights}
  m, s = config.data.images_per_class, config.image_size
  split = tasks.DeviceSplit(
      images=jax.ShapeDtypeStruct((num_train_classes * m, s, s, 3), jnp.uint8),
      index=jax.ShapeDtypeStruct((num_train_classes, m), jnp.int32),
      counts=jax.ShapeDtypeStruct((num_train_classes,), jnp.int32))
  step = outer_step.make_meta_step(augmenter, classifier, spec, optimizer, mesh,
                                   config.meta_batch_size)
  start = time.perf_counter()
  compiled = step.lower(state, split, consts).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  mib = {name: getattr(memory, f'{name}_size_in_bytes') / 2**20
         for name in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  d = mesh.devices.flat[0]
  return {
      'estimate_total_mb': mib['argument'] + mib['output'] - mib['alias'] + mib['temp'],
      **{f'{k}_mb': v for k, v in mib.items()},
      'frozen_weights_mb': sum(x.size * x.dtype.itemsize
                               for x in jax.tree.leaves(weights)) / 2**20,
      'compile_s': compile_s,
      'compiled_for': f'{mesh.devices.size} x {d.platform} ({d.device_kind})',
      'generate_size': a.generate_size,
      'num_inference_steps': a.num_inference_steps,
      'backprop_last_k': a.backprop_last_k,
      'remat': a.remat,
      'guidance_scale': a.guidance_scale,
      'images_per_class': a.factor,
      'n_way': config.task.n_way,
      'meta_batch_size': config.meta_batch_size,
      'sd_dtype': a.sd_dtype,
      'efficient_attention': a.efficient_attention,
      'prompt_net': a.prompt_net.name,
      'classifier': config.classifier.name,
      'image_size': config.image_size,
      'inner_steps': config.inner.steps,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    if _DATA_ONLY.value:
      result = data_benchmark(_CONFIG.value)
    elif _ABSTRACT.value:
      result = abstract_memory(_CONFIG.value)
    else:
      result = benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value, _FLOPS.value)
  except USER_ERRORS as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  for key, value in result.items():
    print(f'{key:>22}: {value}')
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
