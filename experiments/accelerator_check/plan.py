"""What the accelerator check measures and in which order (check.py's plan).

`Shapes` holds the sizes and step counts, full or --smoke; `Plan.run` goes
through the phases of check.py's docstring: 0 (devices, fixtures), A (the
compiles and the gradient tests, in parallel, until the phase's deadline,
which leaves phase B its estimated time), B (the timed runs, one at a time).
The timed meta-steps of one image size share a process, run in increasing
order of XLA's memory estimate, so that the device's cumulative peak after
each is, as nearly as can be measured, that program's own (a later one that
needs less reports the earlier peak; the table marks those).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

from jobs import Job

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = str(HERE / 'worker.py')
TORCH_REF = ('.gpucheck/torch_metastep_bench.py',
             '../shared/tools/torch_ref/torch_metastep_bench.py')


@dataclasses.dataclass(frozen=True)
class Shapes:
  sizes: tuple[int, ...] = (32, 64, 128)
  chunk_sizes: tuple[int, ...] = (32, 128)  # also timed with task_chunk=1
  impls: tuple[str, ...] = ('patches', 'native')
  # One more row at matmul_precision='default' (TF32 on NVIDIA, 1 bf16 pass on TPU).
  default_precision_at: tuple[int, str] = (128, 'patches')
  # One device: per-device figures on any host (B = 4 or 1 need not split over all chips).
  meta: dict = dataclasses.field(default_factory=lambda: {'num_cpu_devices': 0,
                                                          'num_devices': 1})
  steps: int = 10
  warmup: int = 2
  resnet: dict = dataclasses.field(default_factory=lambda: {
      'data.name': 'glyphs', 'num_cpu_devices': 0, 'num_devices': 1})
  diffusion: dict = dataclasses.field(default_factory=lambda: {'num_cpu_devices': 0,
                                                               'num_devices': 1})
  diffusion_steps: int = 2
  num_train_classes: int = 64
  torch_sizes: tuple[int, ...] = (32, 64, 128)
  torch_steps: int = 8
  # Estimated wall seconds of phase B's runs (the phase A deadline leaves them this).
  est_meta_process: float = 15
  est_meta_run: float = 7
  est_resnet: float = 35
  est_diffusion: float = 70
  est_torch: float = 60


def smoke_shapes(fixtures: str) -> Shapes:
  """Every path of the full check at CPU-sized shapes (tiny task, I = 2, 16 px)."""
  tiny = {'num_cpu_devices': 0, 'num_devices': 1, 'task.k_shot': 2, 'task.q_query': 2,
          'meta_batch_size': 2, 'inner.steps': 2, 'data.images_per_class': 8}
  return Shapes(
      sizes=(16,), chunk_sizes=(16,), default_precision_at=(16, 'patches'), meta=tiny,
      steps=1, warmup=1,
      resnet={**tiny, 'data.name': 'glyphs', 'image_size': 32,
              'augmenter.weights': f'{fixtures}/resnet'},
      diffusion={**tiny, 'inner.steps': 1, 'image_size': 16, 'augmenter.generate_size': 16,
                 'augmenter.num_inference_steps': 2, 'augmenter.prompt_net.name': 'convnet',
                 'augmenter.prompt_net.channels': 8, 'augmenter.num_prompt_tokens': 2,
                 'augmenter.guidance_scale': 2.0, 'augmenter.sd_dtype': 'float32',
                 'augmenter.efficient_attention': False},
      diffusion_steps=1, num_train_classes=4, torch_sizes=(16,), torch_steps=2,
      est_meta_process=40, est_meta_run=20, est_resnet=60, est_diffusion=90, est_torch=40)


def meta_runs(shapes: Shapes) -> list[dict]:
  """The meta-step programs: name, overrides, whether this compile counts FLOPs."""
  runs = []
  for size in shapes.sizes:
    for impl in shapes.impls:
      chunks = (0, 1) if size in shapes.chunk_sizes else (0,)
      for chunk in chunks:
        runs.append({'name': f'{impl} {size}px {"vmap" if chunk == 0 else "chunk1"}',
                     'size': size, 'impl': impl, 'chunk': chunk, 'precision': 'highest',
                     'flops': chunk == 0})
  size, impl = shapes.default_precision_at
  if size in shapes.sizes:
    runs.append({'name': f'{impl} {size}px vmap default-precision', 'size': size,
                 'impl': impl, 'chunk': 0, 'precision': 'default', 'flops': False})
  for run in runs:
    run['overrides'] = {**shapes.meta, 'image_size': run['size'],
                        'classifier.conv_impl': run['impl'], 'task_chunk': run['chunk'],
                        'matmul_precision': run['precision']}
  return runs


def resnet_runs(shapes: Shapes) -> list[tuple[str, dict]]:
  """The ResNet-50 augmenter as 'auto' lays it out (on an accelerator: patches trunk,
  native decoder), then with the sub-pixel decoder that CPUs get, to decide 'auto'."""
  return [('resnet50 augmenter', shapes.resnet),
          ('resnet50 augmenter sub-pixel decoder',
           {**shapes.resnet, 'augmenter.conv_impl': 'patches'})]


class Plan:
  """Builds the check's jobs from the arguments and runs the phases."""

  def __init__(self, args, runner):
    self.args, self.runner = args, runner
    self.fixtures = tempfile.mkdtemp(prefix='accel_check_fixtures_') if args.smoke else ''
    self.shapes = smoke_shapes(self.fixtures) if args.smoke else Shapes()
    if args.sizes:
      self.shapes = dataclasses.replace(self.shapes, sizes=_ints(args.sizes))
    if args.chunk_sizes:
      self.shapes = dataclasses.replace(self.shapes, chunk_sizes=_ints(args.chunk_sizes))
    if args.steps:
      self.shapes = dataclasses.replace(self.shapes, steps=args.steps)
    self.platform = ''
    self.serial = ''  # why the steps run one at a time, if they do
    # Flax-era transformers/diffusers (run.sh's .whl_sd), for the jobs that need them only.
    self.hf_flax = {'PYTHONPATH': _path(os.environ.get('HF_FLAX_PYTHONPATH', ''),
                                        runner.env['PYTHONPATH'])}

  def worker(self, name, group, kind, spec, timeout, min_s, env=None) -> Job:
    return Job(name, group, [sys.executable, WORKER, kind, json.dumps(spec)], timeout, min_s,
               env=env or {}, spec={'kind': kind, **spec})

  def want(self, group: str) -> bool:
    return group in self.args.only

  # Phase 0 --------------------------------------------------------------------------

  def phase0(self) -> None:
    r = self.runner
    if shutil.which('nvidia-smi'):
      r.run(Job('nvidia-smi', 'env', ['nvidia-smi'], 20, 3))
      mode = r.run(Job('nvidia-smi compute mode', 'env', [
          'nvidia-smi', '--query-gpu=name,compute_mode,clocks.max.sm,power.limit',
          '--format=csv'], 20, 3))
      text = r.log_path(mode).read_text(errors='replace')
      print(text, flush=True)
      if 'Exclusive' in text:
        self.serial = 'the GPU is in an exclusive compute mode: one process at a time'
    env = r.run(self.worker('env', 'env', 'env', {}, 90, 10))
    self.platform = env.result.get('platform', '')
    if self.platform == 'tpu':
      self.serial = 'TPU: one process at a time can hold the chips'
    if self.args.serial:
      self.serial = '--serial'
    print(r.log_path(env).read_text(errors='replace'), flush=True)
    if self.fixtures and (self.want('resnet') or self.want('diffusion')):
      r.run(self.worker('fixtures', 'env', 'fixtures', {'dir': self.fixtures}, 300, 30,
                        self.hf_flax))

  # Phase A --------------------------------------------------------------------------

  def phase_a(self, deadline: float) -> dict[str, Job]:
    """Starts the diffusion compile, the tests, the renders and the compile queue;
    returns when all but the diffusion compile have ended (or at `deadline`)."""
    r = self.runner
    started: dict[str, Job] = {}
    if self.want('diffusion'):
      job = self.worker('diffusion compile', 'diffusion', 'diffusion', self.diffusion_spec(
          'compile'), 900, 30, self.hf_flax)
      r.start_background(job)
      started[job.name] = job
    if self.want('tests'):
      started['tests'] = self.tests_job()
      r.start_background(started['tests'], deadline)
    queue = self.compile_jobs()
    renders = self.start_renders(queue, deadline)
    compiles = []
    while queue or any(not j.done for j in compiles):
      if time.monotonic() >= deadline:
        for job in queue:
          job.skipped = 'phase A deadline (compiles)'
          r.record(job)
        queue = []
        r.wait(compiles, deadline)
        break
      running = sum(1 for j in compiles if not j.done)
      for job in list(queue):
        render = next(j for j in renders.values() if j.name == job.spec['render'])
        if running < self.args.parallel and render.done:
          queue.remove(job)
          if r.start_background(job, deadline):
            compiles.append(job)
            running += 1
      r.tick()
      time.sleep(0.2)
    started.update({j.name: j for j in compiles})
    r.wait([j for name, j in started.items() if name != 'diffusion compile'], deadline)
    return started

  def compile_jobs(self) -> list[Job]:
    """Phase A's compiles, largest programs first (the phase ends with its slowest)."""
    s, queue = self.shapes, []
    if self.want('meta'):
      for run in meta_runs(s):
        queue.append(self.worker(f'compile {run["name"]}', 'meta', 'meta', {
            'config': 'configs/default.py', 'overrides': run['overrides'], 'mode': 'compile',
            'flops': run['flops'], 'run': run['name']}, 400, 20))
    if self.want('resnet'):
      for name, overrides in resnet_runs(s):
        queue.append(self.worker(f'compile {name}', 'resnet', 'meta', {
            'config': 'configs/resnet_augmenter.py', 'overrides': overrides, 'mode': 'compile',
            'flops': True}, 600, 30, self.hf_flax))
    queue.sort(key=lambda j: -j.spec['overrides'].get('image_size', 128))
    return queue

  def start_renders(self, jobs: list[Job], deadline: float) -> dict:
    """One glyph render per (size, images per class) the jobs load, on the CPU, in the
    background; each job's spec names its render."""
    renders = {}
    for job in jobs:
      o = job.spec['overrides']
      key = (o.get('image_size', 128), o.get('data.images_per_class', 60))
      if key not in renders:
        renders[key] = self.worker(f'render {key[0]}px x{key[1]}', 'meta', 'render', {
            'image_size': key[0], 'images_per_class': key[1]}, 240, 10,
            {'JAX_PLATFORMS': 'cpu'})
        self.runner.start_background(renders[key], deadline)
      job.spec['render'] = renders[key].name
    return renders

  def tests_job(self) -> Job:
    env = {'PYTHONPATH': _path(os.environ.get('TEST_PYTHONPATH', ''),
                               self.runner.env['PYTHONPATH']),
           'JAX_COMPILATION_CACHE_DIR': ''}  # conftest.py makes its own
    if self.platform not in ('', 'cpu'):
      env['AUTOAUG_TEST_XLA_FLAGS'] = ''  # default XLA flags (conftest lowers CPU opt level)
    argv = [sys.executable, '-m', 'pytest', '-q', '-rfE', '-o', 'addopts=',
            '-p', 'no:cacheprovider', 'tests/test_meta_gradient.py']
    if self.args.tests_mark:
      argv += ['-m', self.args.tests_mark]
    return Job('tests', 'tests', argv, 300, 30, env=env,
               spec={'mark': self.args.tests_mark, 'file': 'tests/test_meta_gradient.py'})

  def diffusion_spec(self, mode: str) -> dict:
    spec = {'config': 'configs/diffusion.py', 'overrides': self.shapes.diffusion, 'mode': mode,
            'steps': self.shapes.diffusion_steps, 'warmup': 1,
            'num_train_classes': self.shapes.num_train_classes}
    if self.fixtures:
      spec['sd_dir'] = f'{self.fixtures}/sd'
    return spec

  # Phase B --------------------------------------------------------------------------

  def phase_b(self, compiled: dict[str, Job]) -> None:
    r, s = self.runner, self.shapes
    if self.want('meta'):
      runs = meta_runs(s)
      for size in s.sizes:
        mine = [run for run in runs if run['size'] == size]
        for run in mine:  # FLOPs of the vmapped program at float32 'highest', same arithmetic
          run['flops_per_meta_step'] = _result(
              compiled, f'compile {run["impl"]} {size}px vmap', 'flops_per_meta_step')
          run['count_flops'] = bool(self.serial and run['flops'])  # no compile run counted
          run['flops_of'] = f'{run["impl"]} {size}px vmap'  # same arithmetic, whatever the layout
          run['compile_s'] = _result(compiled, f'compile {run["name"]}', 'compile_s')
          run['xla_temp_mb'] = _result(compiled, f'compile {run["name"]}', 'xla_temp_mb') or 0
        mine.sort(key=lambda run: run['xla_temp_mb'])  # stable: vmap before chunk1
        r.run(self.worker(f'time meta-step {size}px', 'meta', 'meta', {
            'config': 'configs/default.py', 'mode': 'time', 'steps': s.steps,
            'warmup': s.warmup, 'runs': mine},
            # Serial: each run compiles itself (three compiles where it counts FLOPs).
            150 * len(mine) if self.serial else 300, s.est_meta_process + s.est_meta_run))
    if self.want('resnet'):
      r.run(self.worker('time resnet50 augmenter', 'resnet', 'meta', {
          'config': 'configs/resnet_augmenter.py', 'mode': 'time',
          'steps': max(3, s.steps // 2), 'warmup': 1, 'runs': [{
              'name': name, 'overrides': overrides,
              'flops_per_meta_step': _result(compiled, f'compile {name}', 'flops_per_meta_step'),
              'compile_s': _result(compiled, f'compile {name}', 'compile_s'),
              'count_flops': bool(self.serial)} for name, overrides in resnet_runs(s)]},
          300 * len(resnet_runs(s)), s.est_resnet * len(resnet_runs(s)), self.hf_flax))
    if self.want('diffusion'):
      run = self.worker('diffusion run', 'diffusion', 'diffusion', self.diffusion_spec('run'),
                        600, s.est_diffusion * 0.6, self.hf_flax)
      compile_job = compiled.get('diffusion compile')
      if compile_job is not None:  # its executable is what the run reads from the cache
        r.wait([compile_job], r.deadline - s.est_diffusion)
      if compile_job is not None and not compile_job.ok:
        # A recompile would not fit either; the compile's log says what went wrong.
        run.skipped = f'the diffusion compile did not finish ({compile_job.name} log)'
        r.record(run)
      else:
        r.run(run)
    if self.want('torch'):
      if self.platform == 'tpu':  # the wrapper would fall back to the host's CPU
        self.runner.record(Job('torch.func reference', 'torch', [], 0,
                               skipped='a TPU host: the reference runs on CUDA or CPU only'))
      else:
        self.torch_jobs()
    if shutil.which('nvidia-smi'):
      r.run(Job('nvidia-smi at end', 'env', ['nvidia-smi', '--query-gpu=name,memory.used,'
                'clocks.sm,power.draw,temperature.gpu', '--format=csv'], 10, 2))

  def torch_jobs(self) -> None:
    ref = next((REPO / p for p in TORCH_REF if (REPO / p).is_file()), None)
    py = self.args.torch_py or sys.executable
    if ref is None:
      job = Job('torch.func reference', 'torch', [], 0, skipped=f'no {TORCH_REF[0]}')
      self.runner.record(job)
      return
    # The same task shape and rates as the meta-step (our inner.lr 0.1, not its 0.01).
    s, m = self.shapes, self.shapes.meta
    args = ['--mode', 'func', '--aug-hid', '8', '--inner-lr', '0.1', '--outer-lr', '1e-3',
            '--noise-std', '0.1', '--n-way', '3', '--k-shot', str(m.get('task.k_shot', 5)),
            '--q-query', str(m.get('task.q_query', 5)),
            '--meta-batch', str(m.get('meta_batch_size', 4)), '--factor', '1',
            '--inner-steps', str(m.get('inner.steps', 20))]
    sizes = [str(x) for x in s.torch_sizes]
    wrapper = str(HERE / 'torch_ref_gpu.py')
    self.runner.run(Job('torch.func reference', 'torch', [
        py, wrapper, str(ref), '--', *sizes, '--', *args, '--warmup', '2', '--steps',
        str(s.torch_steps)], 150, s.est_torch * 0.5, spec={'sizes': sizes}))
    mid = sizes[len(sizes) // 2]
    self.runner.run(Job('torch.func reference, synchronised', 'torch', [
        py, wrapper, str(ref), 'sync', '--', mid, '--', *args, '--warmup', '1', '--steps',
        '4'], 60, 15, spec={'sizes': [mid], 'sync': True}))

  def run_serial(self) -> None:
    """One process at a time (TPU, an exclusive-process GPU, --serial): each timed run
    compiles its own program and counts its FLOPs; no compile phase before."""
    r = self.runner
    renders = self.start_renders(self.compile_jobs(), r.deadline)
    r.wait(list(renders.values()))
    if self.want('tests'):
      r.run(self.tests_job())
    self.phase_b({})

  def run(self) -> None:
    r, s = self.runner, self.shapes
    try:
      self.phase0()
      if self.serial:
        print(f'### serial mode ({self.serial})', flush=True)
        self.run_serial()
        return
      reserve = 0.0
      if self.want('meta'):
        reserve += len(s.sizes) * s.est_meta_process + len(meta_runs(s)) * s.est_meta_run
      reserve += (s.est_resnet * len(resnet_runs(s)) * self.want('resnet')
                  + s.est_diffusion * self.want('diffusion')
                  + s.est_torch * self.want('torch'))
      compiled = self.phase_a(r.deadline - reserve)
      self.phase_b(compiled)
    finally:
      if self.fixtures:
        shutil.rmtree(self.fixtures, ignore_errors=True)


def _path(*parts: str) -> str:
  return os.pathsep.join(p for p in parts if p)


def _result(jobs: dict, name: str, key: str):
  job = jobs.get(name)
  return job.result.get(key) if job is not None else None


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.replace(',', ' ').split())
