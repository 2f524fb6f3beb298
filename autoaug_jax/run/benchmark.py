"""The benchmark's measurements (the `benchmark` entry point's docstring says what each is).

`benchmark` times the compiled meta-step of a config on its devices,
`data_benchmark` the loading and placing of its dataset, and
`abstract_memory` compiles the full-size diffusion meta-step for abstract
weights; `diffusion_benchmark` also runs that program, with random weights of
SD-1.5's shapes and random images (for the accelerator check). The first two
start from the shared setup path (`setup.py`); the others build their pieces
from SD-1.5's shapes without loading data or weights.

Every result names what produced it (`machine`, `layout`): platform, device
kind, mesh size, process count, jax and jaxlib versions, and the resolved
values of the config's 'auto' keys; meta-step throughputs come with the FLOP
utilisation against the devices' datasheet peak (`peak_flops.py`).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate_diffusion
from autoaug_jax.core import meta_step, sharding, tasks
from autoaug_jax.core.objective import Objective
from autoaug_jax.errors import ConfigError
from autoaug_jax.run import peak_flops
from autoaug_jax.run import setup as setup_lib
from autoaug_jax.types import Constants


def machine(mesh) -> dict:
  """What ran it: platform, device kind, mesh size, processes, jax and jaxlib versions."""
  device = mesh.devices.flat[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'num_devices': int(mesh.devices.size), 'process_count': jax.process_count(),
          'jax_version': jax.__version__, 'jaxlib_version': jaxlib.__version__}


def layout(config) -> dict:
  """The config's platform-dependent keys as resolved on this platform
  (`builders.resolved_layout`), with the classifier's configured conv_impl beside."""
  resolved = builders.resolved_layout(config)
  return {'conv_impl': resolved['classifier.conv_impl'],
          'conv_impl_config': config.classifier.conv_impl,
          **({'augmenter_conv_impl': resolved['augmenter.conv_impl'],
              'augmenter_decoder_impl': resolved['augmenter.decoder_impl']}
             if config.augmenter.name == 'resnet50' else {}),
          'task_chunk': resolved['task_chunk'],
          'matmul_precision': resolved['matmul_precision']}


def flop_fields(result: dict, flops: float, incomplete: str = '') -> dict:
  """FLOPs per meta-step, achieved GFLOP/s and MFU for a result holding `machine`'s and
  `layout`'s keys and `step_time_median_s`. `flops` NaN (not counted) or an
  `incomplete` count (why) give mfu None."""
  peak, basis, source = peak_flops.lookup(result['device_kind'], result['platform'],
                                          result['matmul_precision'])
  achieved = flops / result['step_time_median_s']
  return {'flops_per_meta_step': flops, 'achieved_gflops': achieved / 1e9,
          'mfu': None if incomplete else peak_flops.mfu(achieved, peak, result['num_devices']),
          'peak_flops_per_device': peak, 'peak_flops_basis': basis,
          'peak_flops_source': incomplete or source}


def memory_mb(compiled) -> dict[str, float] | None:
  """XLA's buffer assignment of a compiled program in MiB (None where the backend, or
  an executable loaded from the compilation cache, does not report it)."""
  try:
    memory = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 -- optional diagnostics; backends differ
    return None
  if memory is None:
    return None
  return {name: getattr(memory, f'{name}_size_in_bytes', 0) / 2**20
          for name in ('argument', 'output', 'alias', 'temp', 'generated_code')}


def _flops(run: setup_lib.Prepared, meta_batch_size: int, inner_steps: int) -> float:
  """XLA's FLOP count of one meta-step with `inner_steps` unrolled inner steps.

  Counted with all of a device's tasks in one vmap (task_chunk=0): the same
  arithmetic as any chunking, but with no lax.map whose body XLA would count once.
  A 'native_vjp' classifier is counted in its 'patches' form, the same
  arithmetic: under that vmap its convolutions are grouped, and XLA counts a
  grouped convolution's FLOPs once per group (2x at two tasks per device).
  """
  objective = run.objective
  classifier = objective.classifier
  if getattr(classifier, 'conv_impl', None) == 'native_vjp':
    classifier = dataclasses.replace(classifier, conv_impl='patches')
  setup = dataclasses.replace(run.setup, task_chunk=0, objective=dataclasses.replace(
      objective, classifier=classifier,
      inner=dataclasses.replace(objective.inner, steps=inner_steps, unroll=True)))
  mesh = run.mesh
  state = setup.init_state(mesh)
  compiled = setup.meta_step(mesh, meta_batch_size).lower(
      state, run.splits['train'], run.consts).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The partitioned program's count is per device; tasks split evenly.
  return float(cost.get('flops', float('nan'))) * mesh.devices.size


def flop_count(run: setup_lib.Prepared, meta_batch_size: int) -> float:
  """XLA's FLOPs of one meta-step at the configured inner steps (I = 2 and 3 unrolled,
  extrapolated; see the `benchmark` entry point's docstring)."""
  steps = run.objective.inner.steps
  if steps <= 3:
    return _flops(run, meta_batch_size, steps)
  f2, f3 = _flops(run, meta_batch_size, 2), _flops(run, meta_batch_size, 3)
  return f2 + (steps - 2) * (f3 - f2)


def peak_memory_mb() -> tuple[float, str]:
  """The accelerator's peak bytes in use where reported, else the process's peak RSS."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'host peak RSS'


def _current_rss_mb() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def data_benchmark(config) -> dict:
  """Load time and memory of the configured dataset's three splits on the config's mesh."""
  mesh = setup_lib.checked_mesh(config)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.perf_counter()
  splits = setup_lib.load_splits(config)
  load_s = time.perf_counter() - start
  per_device = tasks.placed_bytes(list(splits.values()))
  placed = setup_lib.to_device(splits, mesh)  # checks that they fit first
  jax.block_until_ready(placed)
  summary = {k: (int(s.images.shape[0]), s.images.nbytes / 2**20) for k, s in splits.items()}
  del splits  # as training does: only the device copies stay
  gc.collect()
  stats = mesh.devices.flat[0].memory_stats() or {}
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
      'devices': sharding.describe(mesh),
      **machine(mesh),
  }


def compile_step(run: setup_lib.Prepared, meta_batch_size: int) -> tuple[object, object, float]:
  """A run's meta-step compiled for its train split: (compiled, initial state, compile seconds)."""
  state = run.init_state()
  start = time.perf_counter()
  compiled = run.meta_step(meta_batch_size).lower(state, run.splits['train'], run.consts).compile()
  return compiled, state, time.perf_counter() - start


def timed_step(compiled, state, split, consts) -> tuple[object, dict, float]:
  """One meta-step ended with `block_until_ready`: (new state, metrics, seconds).
  `state` is donated."""
  start = time.perf_counter()
  state, metrics = compiled(state, split, consts)
  jax.block_until_ready((state, metrics))
  return state, metrics, time.perf_counter() - start


def _time_steps(compiled, state, split, consts, warmup: int, steps: int
                ) -> tuple[list[float], dict]:
  """Seconds of each of `steps` meta-steps after `warmup` untimed ones, and the last
  step's metrics (`state` is donated and carried along)."""
  for _ in range(warmup):
    state, metrics = compiled(state, split, consts)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    state, metrics, seconds = timed_step(compiled, state, split, consts)
    times.append(seconds)
  return times, metrics


def benchmark(config, steps: int = 5, warmup: int = 2, count_flops: bool = True) -> dict:
  """Runs the measurements the `benchmark` entry point describes; returns the result dict."""
  run = setup_lib.prepare(config, ('train',), training=True)
  mesh, split, consts = run.mesh, run.splits['train'], run.consts
  compiled, state, compile_s = compile_step(run, config.meta_batch_size)
  memory = memory_mb(compiled)

  times, metrics = _time_steps(compiled, state, split, consts, warmup, steps)
  median = statistics.median(times)
  peak_mb, peak_kind = peak_memory_mb()

  result = {
      'meta_steps_per_s': 1.0 / median,
      'tasks_per_s': config.meta_batch_size / median,
      'step_time_median_s': median,
      'step_times_s': [round(t, 4) for t in times],
      'compile_s': compile_s,
      'peak_memory_mb': peak_mb,
      'peak_memory_kind': peak_kind,
      'xla_temp_mb': memory['temp'] if memory else None,
      'meta_loss': float(metrics['meta_loss']),
      'devices': sharding.describe(mesh),
      'image_size': config.image_size,
      'task': f'{config.task.n_way}-way {config.task.k_shot}-shot {config.task.q_query}-query',
      'inner_steps': config.inner.steps,
      'meta_batch_size': config.meta_batch_size,
      'factor': config.augmenter.factor,
      'remat': config.inner.remat,
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
      **machine(mesh),
      **layout(config),
  }
  flops = flop_count(run, config.meta_batch_size) if count_flops else float('nan')
  # The DDIM sampler is a lax.scan that XLA counts once, and its UNet runs in sd_dtype.
  result.update(flop_fields(result, flops, incomplete=(
      'diffusion augmenter: XLA counts the DDIM scan body once, so the FLOP count is '
      'partial; mfu not computed') if config.augmenter.name == 'diffusion' else ''))
  return result


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


@dataclasses.dataclass(frozen=True)
class _DiffusionProgram:
  """The diffusion meta-step of a config for SD weights of given shapes, and its
  abstract arguments (the same program whether it is then run or not)."""
  mesh: object
  step: object
  augmenter: object
  classifier: object
  optimizer: object
  args: tuple  # abstract (state, split, consts)
  weights: dict  # abstract frozen SD weights


def _diffusion_program(config, models, num_train_classes: int) -> _DiffusionProgram:
  from autoaug_jax.pretrained import stable_diffusion

  a = config.augmenter
  if a.name != 'diffusion':
    raise ConfigError(f'--abstract compiles the diffusion augmenter with SD-1.5 shapes; '
                      f'augmenter.name={a.name!r}. Set --config.augmenter.name=diffusion.')
  if a.prompt_net.weights:
    raise ConfigError('--abstract uses ViT-B/32 shapes; leave augmenter.prompt_net.weights empty.')
  validate_diffusion(a, check_dirs=False)
  builders.apply_matmul_precision(config)
  mesh = builders.mesh(config)
  if models is None:
    sd, weights = stable_diffusion.sd15_abstract(stable_diffusion.DTYPES[a.sd_dtype],
                                                 efficient_attention=a.efficient_attention)
  else:
    sd, weights = models[0], _abstract(models[1])
  augmenter = builders.diffusion_from_models(a, config.task.n_way, sd, weights)
  task = builders.task_spec(config)
  params = jax.eval_shape(lambda: meta_step.init_params(augmenter, task.image_shape,
                                                        config.seed))
  optimizer = meta_step.make_optimizer(builders.optimizer_settings(config), augmenter, params)
  state = meta_step.MetaState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                              opt_state=jax.eval_shape(optimizer.init, params),
                              key=jax.ShapeDtypeStruct((2,), jnp.uint32))
  classifier = builders.classifier(config)
  consts = Constants(augmenter=weights, classifier=_abstract(classifier.constants(config.seed)))
  objective = Objective(augmenter=augmenter, classifier=classifier, task=task,
                        inner=builders.inner_loop(config))
  m, s = config.data.images_per_class, config.image_size
  split = tasks.DeviceSplit(
      images=jax.ShapeDtypeStruct((num_train_classes * m, s, s, 3), jnp.uint8),
      index=jax.ShapeDtypeStruct((num_train_classes, m), jnp.int32),
      counts=jax.ShapeDtypeStruct((num_train_classes,), jnp.int32))
  step = meta_step.make_meta_step(objective, optimizer, mesh, config.meta_batch_size,
                                  builders.task_chunk(config))
  return _DiffusionProgram(mesh=mesh, step=step, augmenter=augmenter, classifier=classifier,
                           optimizer=optimizer, args=(state, split, consts), weights=weights)


def _diffusion_facts(config, program: _DiffusionProgram) -> dict:
  a = config.augmenter
  return {
      'frozen_weights_mb': sum(x.size * x.dtype.itemsize
                               for x in jax.tree.leaves(program.weights)) / 2**20,
      'compiled_for': sharding.describe(program.mesh),
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
      **machine(program.mesh),
      **layout(config),
  }


def _estimate(compiled) -> dict:
  mib = memory_mb(compiled)
  if mib is None:
    return {'estimate_total_mb': None}
  return {'estimate_total_mb': mib['argument'] + mib['output'] - mib['alias'] + mib['temp'],
          **{f'{k}_mb': v for k, v in mib.items()}}


def abstract_memory(config, num_train_classes: int = 64) -> dict:
  """Compiles the diffusion meta-step for abstract SD-1.5 weights, prompt network,
  state and split (`num_train_classes` x data.images_per_class images; MiniImagenet
  has 64 training classes) and returns XLA's memory analysis in MiB."""
  program = _diffusion_program(config, None, num_train_classes)
  start = time.perf_counter()
  compiled = program.step.lower(*program.args).compile()
  compile_s = time.perf_counter() - start
  return {**_estimate(compiled), 'compile_s': compile_s, **_diffusion_facts(config, program)}


def random_weights(abstract, mesh, seed: int = 0, scale: float = 0.02):
  """Normal(0, scale) values of the shapes and dtypes of `abstract`, replicated on the mesh.

  Cut from one host buffer of normal draws the size of the largest leaf (a
  different offset per leaf), so that SD-1.5's billion weights cost a copy,
  not a billion draws or a compile; values do not change time or memory.
  """
  leaves, treedef = jax.tree.flatten(abstract)
  largest = max(int(np.prod(leaf.shape)) for leaf in leaves)
  rng = np.random.default_rng(seed)
  draws = scale * rng.standard_normal(2 * largest, dtype=np.float32)
  values = []
  for i, leaf in enumerate(leaves):
    size, start = int(np.prod(leaf.shape)), (7919 * i) % largest
    values.append(draws[start:start + size].reshape(leaf.shape).astype(leaf.dtype))
  return sharding.put_replicated(treedef.unflatten(values), mesh)


def _random_split(split: tasks.DeviceSplit, mesh, seed: int = 1) -> tasks.DeviceSplit:
  """Uniform random uint8 images in the layout of an abstract split, replicated."""
  n, m = split.index.shape
  rng = np.random.default_rng(seed)
  return sharding.put_replicated(tasks.DeviceSplit(
      images=rng.integers(0, 256, split.images.shape, dtype=np.uint8),
      index=np.arange(n * m, dtype=np.int32).reshape(n, m),
      counts=np.full((n,), m, np.int32)), mesh)


def diffusion_benchmark(config, steps: int = 2, warmup: int = 1, num_train_classes: int = 64,
                        models=None, compile_only: bool = False) -> dict:
  """The diffusion meta-step of `abstract_memory`, compiled and then run.

  Without a checkpoint: the frozen weights are random normal values of SD-1.5's
  shapes and dtype (`models=(sd, weights)` gives other modules and shapes, e.g.
  a tiny pipeline for smoke tests), the prompt network is freshly initialised
  and the split holds random images; none of that changes time or memory.
  Returns XLA's memory estimate next to the device's measured peak bytes in use
  (`compile_only`: the estimate alone, having filled any compilation cache).
  """
  program = _diffusion_program(config, models, num_train_classes)
  facts = _diffusion_facts(config, program)
  start = time.perf_counter()
  compiled = program.step.lower(*program.args).compile()
  result = {**_estimate(compiled), 'compile_s': time.perf_counter() - start, **facts}
  if compile_only:
    return result
  mesh, (_, split, _) = program.mesh, program.args
  start = time.perf_counter()
  image_shape = builders.task_spec(config).image_shape
  params = jax.jit(lambda: meta_step.init_params(program.augmenter, image_shape,
                                                 config.seed))()
  state = meta_step.init_state(params, program.optimizer, config.seed, mesh)
  consts = Constants(
      augmenter=random_weights(program.weights, mesh, config.seed),
      classifier=sharding.put_replicated(program.classifier.constants(config.seed), mesh))
  split = _random_split(split, mesh)
  jax.block_until_ready((state, consts, split))
  result['materialise_s'] = time.perf_counter() - start
  times, metrics = _time_steps(compiled, state, split, consts, warmup, steps)
  peak_mb, peak_kind = peak_memory_mb()
  median = statistics.median(times)
  result.update({
      'step_time_median_s': median, 'meta_steps_per_s': 1.0 / median,
      'step_times_s': [round(t, 4) for t in times],
      'peak_memory_mb': peak_mb, 'peak_memory_kind': peak_kind,
      'meta_loss': float(metrics['meta_loss']),
      'weights': 'random normal(0, 0.02) of the models\' shapes; random uint8 images'})
  return result
