"""One measurement of the accelerator check, in its own process (check.py starts it).

  python experiments/accelerator_check/worker.py KIND '{"json": "spec"}'

Each measurement runs in a fresh process so that the device's peak bytes in
use is that measurement's own, and so that check.py can bound it with a
timeout. Results are printed as `RESULT {json}` lines; check.py merges them in
order, so a process killed after a first RESULT (a compile done, the FLOP count
not) still reports what it finished. Kinds:

- env: versions of the packages that matter, jax.devices() and the platform;
- render: the glyph dataset at spec.image_size x spec.images_per_class into the
  cache (run with JAX_PLATFORMS=cpu, before the compiles that read it);
- fixtures: a tiny Stable Diffusion pipeline and a tiny ResNet saved to
  spec.dir (smoke mode; tests/diffusion_fixtures.py, tests/resnet_fixtures.py);
- meta: the meta-step of a config (spec.config + spec.overrides). mode
  'compile' lowers and compiles it (filling the persistent compilation cache
  the timed run then reads) and, with spec.flops, counts its FLOPs
  (`benchmark.flop_count`); mode 'time' is `benchmark.benchmark`, with the
  FLOPs counted by the compile run (spec.flops_per_meta_step) for the MFU;
- diffusion: `benchmark.diffusion_benchmark`, mode 'compile' (XLA's estimate,
  cache filled) or 'run' (random weights, measured peak), on SD-1.5's shapes
  or, with spec.sd_dir, a tiny pipeline's.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PACKAGES = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'libtpu', 'flax', 'optax',
            'orbax-checkpoint', 'chex', 'numpy', 'scipy', 'ml-collections', 'dm-pix',
            'tensorflow-datasets', 'protobuf', 'transformers', 'diffusers', 'huggingface-hub',
            'tokenizers', 'torch', 'pytest')


def emit(result: dict) -> None:
  print('RESULT ' + json.dumps(result, default=str), flush=True)


def load_config(spec: dict):
  """spec.config ('configs/NAME.py[:ARG]') with spec.overrides (dotted keys) applied."""
  from autoaug_jax.config.schema import config_from_file
  path, _, arg = spec['config'].partition(':')
  config = config_from_file(REPO / path, arg or None)
  with config.unlocked():
    config.update_from_flattened_dict(spec.get('overrides', {}))
  return config


def env(spec: dict) -> None:
  import importlib.metadata as md
  print('python', sys.version.split()[0], platform.machine(), flush=True)
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = md.version(name)
    except md.PackageNotFoundError:
      continue
  # The carried wheels some steps put first on their path (run.sh): their versions too.
  for var in ('HF_FLAX_PYTHONPATH', 'TEST_PYTHONPATH'):
    for path in filter(None, os.environ.get(var, '').split(os.pathsep)):
      for dist in md.distributions(path=[path]):
        versions[f'{dist.metadata["Name"]} ({var})'] = dist.version
  print('\n'.join(f'{k} {v}' for k, v in versions.items()), flush=True)
  import jax
  devices = jax.devices()
  print('jax.devices():', devices, flush=True)
  print('default_matmul_precision:', jax.config.jax_default_matmul_precision, flush=True)
  emit({'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
        'num_devices': len(devices), 'process_count': jax.process_count(),
        'python': sys.version.split()[0], 'versions': versions})


def render(spec: dict) -> None:
  from autoaug_jax.data import glyphs
  start = time.perf_counter()
  glyphs.cached(spec['image_size'], spec['images_per_class'])
  emit({'render_s': time.perf_counter() - start})


def fixtures(spec: dict) -> None:
  sys.path.insert(0, str(REPO / 'tests'))
  import diffusion_fixtures
  import resnet_fixtures
  root = pathlib.Path(spec['dir'])
  start = time.perf_counter()
  diffusion_fixtures.save_tiny_sd(root / 'sd')
  resnet_fixtures.save_tiny_resnet(root / 'resnet')
  emit({'fixtures_s': time.perf_counter() - start, 'sd_dir': str(root / 'sd'),
        'resnet_dir': str(root / 'resnet')})


def timed(spec: dict, run: dict, counted: dict) -> dict:
  """`benchmark.benchmark` of one program, with the FLOP count of the compile run, of
  this run (run.count_flops), or of an earlier run of this process with the same
  arithmetic (run.flops_of: the vmapped program of the same size and layout)."""
  import math

  import jax

  from autoaug_jax.run import benchmark
  result = benchmark.benchmark(load_config({**spec, **run}), spec['steps'], spec['warmup'],
                               count_flops=run.get('count_flops', False))
  if math.isfinite(result['flops_per_meta_step']):
    counted[run.get('name', '')] = result['flops_per_meta_step']
  flops = run.get('flops_per_meta_step') or counted.get(run.get('flops_of', ''))
  if flops and not run.get('count_flops'):
    result.update(benchmark.flop_fields(result, flops))
    result['flops_from'] = (f'{run.get("flops_of")} (task_chunk=0, I = 2 and 3 unrolled, '
                            'XLA\'s count; the same arithmetic)')
  if run.get('compile_s'):  # this process read the executable from the cache
    result['load_s'], result['compile_s'] = result['compile_s'], run['compile_s']
  jax.clear_caches()  # the next program's buffers and executables, not this one's
  return result


def meta(spec: dict) -> None:
  from autoaug_jax.run import benchmark
  from autoaug_jax.run import setup as setup_lib
  if spec['mode'] == 'time':
    # Several programs in one process (spec.runs, in increasing order of XLA's
    # estimate): the peak bytes in use is cumulative, so each reports
    # max(own, earlier ones'); `peak_cumulative` says when that may be an earlier one's.
    peak, counted = 0.0, {}
    for i, run in enumerate(spec.get('runs') or [{}]):
      try:
        result = timed(spec, run, counted)
      except Exception as e:  # noqa: BLE001 -- one failed program, not the others
        print(f'{run.get("name", "")}: {type(e).__name__}: {e}', flush=True)
        emit({f'run:{run.get("name", "")}': {'error': f'{type(e).__name__}: {e}'[:500]}})
        continue
      result['peak_cumulative'] = i > 0 and result['peak_memory_mb'] <= peak
      peak = max(peak, result['peak_memory_mb'])
      emit({f'run:{run["name"]}': result} if 'name' in run else result)
    return
  config = load_config(spec)
  run = setup_lib.prepare(config, ('train',), training=True)
  state = run.init_state()
  start = time.perf_counter()
  compiled = run.meta_step(config.meta_batch_size).lower(
      state, run.splits['train'], run.consts).compile()
  memory = benchmark.memory_mb(compiled)
  emit({'compile_s': time.perf_counter() - start,
        'xla_temp_mb': memory['temp'] if memory else None,
        **benchmark.machine(run.mesh), **benchmark.layout(config)})
  if spec.get('flops'):
    start = time.perf_counter()
    emit({'flops_per_meta_step': benchmark.flop_count(run, config.meta_batch_size),
          'flop_count_s': time.perf_counter() - start})


def diffusion(spec: dict) -> None:
  from autoaug_jax.run import benchmark
  config = load_config(spec)
  models = None
  if spec.get('sd_dir'):
    from autoaug_jax.pretrained import stable_diffusion
    a = config.augmenter
    models = stable_diffusion.load(spec['sd_dir'], stable_diffusion.DTYPES[a.sd_dtype],
                                   efficient_attention=a.efficient_attention)
  emit(benchmark.diffusion_benchmark(
      config, spec.get('steps', 2), spec.get('warmup', 1), spec.get('num_train_classes', 64),
      models=models, compile_only=spec['mode'] == 'compile'))


KINDS = {'env': env, 'render': render, 'fixtures': fixtures, 'meta': meta,
         'diffusion': diffusion}

if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  KINDS[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
