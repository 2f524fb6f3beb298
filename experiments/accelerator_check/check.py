r"""The accelerator check: one call on a GPU or TPU host, one markdown table for BUILD_NOTES.

  python experiments/accelerator_check/check.py [--budget 480] [--out DIR] [--smoke]
      [--only env,tests,meta,resnet,diffusion,torch]

(run.sh beside it installs the carried wheels first; README.md says how to run it
through the device tool.) In this order, within --budget seconds of wall time:

0. the devices and package versions (and nvidia-smi where there is one);
1. compiles, in parallel processes (XLA compiles are single-threaded; the
   host has cores to spare), each into a persistent compilation cache: the
   paper-shape meta-step (configs/default.py: 3-way 5-shot 5-query, I = 20,
   B = 4) at 32, 64 and 128 px with the classifier's convolutions as patches
   and as XLA's native ones, all tasks in one vmap and one task at a time
   (task_chunk=1), plus XLA's FLOP count of each vmapped program; the
   ResNet-50 augmenter at 128 px (configs/resnet_augmenter.py, random trunk;
   its decoder native and sub-pixel);
   the SD-1.5 diffusion meta-step at 512 px (configs/diffusion.py, the longest
   compile). Alongside them the gradient-correctness tests
   (tests/test_meta_gradient.py -m 'not slow': finite differences, scan vs
   Python loop) run on the device;
2. then one process at a time, with the device to itself except for the
   diffusion compile if it is still going (each row says so): each meta-step
   timed (`benchmark.benchmark`, its executable read from the cache), the
   ResNet-50 augmenter timed, the diffusion meta-step run with random
   SD-1.5-shaped weights (measured peak bytes next to XLA's estimate), and the
   torch.func reference at the same shapes (`torch_ref_gpu.py`).

Every step has a timeout and a minimum time; one that does not fit in what is
left of the budget is skipped and listed as such. The driver itself is
stdlib-only and never initialises JAX (a process holding the accelerator would
starve the workers). It writes to --out: accel_check.md (the table),
results.jsonl (every raw result, one JSON line per step), logs/STEP.log.
--smoke shrinks every shape (16 px, I = 2, tiny SD and ResNet fixtures) so
that the whole script runs end to end on a CPU in minutes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import jobs as jobs_lib  # noqa: E402  (beside this file)
import plan as plan_lib  # noqa: E402
import table  # noqa: E402

GROUPS = ('env', 'tests', 'meta', 'resnet', 'diffusion', 'torch')


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--budget', type=float, default=480, help='wall seconds for everything')
  p.add_argument('--out', default=os.environ.get('OUT') or '/tmp/accel_check')
  p.add_argument('--smoke', action='store_true', help='tiny shapes, for a CPU check')
  p.add_argument('--only', default=','.join(GROUPS), help='comma-separated groups to run')
  p.add_argument('--parallel', type=int, default=0,
                 help='compile processes at once (0: cores / 2, at most 8)')
  p.add_argument('--sizes', default='', help='meta-step image sizes (default 32,64,128)')
  p.add_argument('--chunk_sizes', default='', help='sizes also run with task_chunk=1')
  p.add_argument('--steps', type=int, default=0, help='timed meta-steps (default 10)')
  p.add_argument('--serial', action='store_true',
                 help='one process at a time, no compile phase (automatic on TPU)')
  p.add_argument('--tests_mark', default='not slow', help="pytest -m of the gradient tests")
  p.add_argument('--torch_py', default=os.environ.get('TORCH_PY', ''),
                 help='python with torch for the reference (default: this one)')
  args = p.parse_args(argv)
  args.only = {g.strip() for g in args.only.split(',') if g.strip()}
  unknown = args.only - set(GROUPS)
  if unknown:
    p.error(f'--only: unknown group(s) {sorted(unknown)}; choose from {GROUPS}')
  if not args.parallel:
    args.parallel = max(1, min(8, (os.cpu_count() or 2) // 2))
  return args


def worker_env(args, cache_dir: str) -> dict:
  """What every worker process sees: no preallocation (several JAX processes share
  the device during the compiles; the BFC allocator still reports peak bytes), one
  persistent compilation cache for the whole check, and quiet libraries."""
  env = dict(os.environ)
  env.update({'XLA_PYTHON_CLIENT_PREALLOCATE': 'false', 'JAX_COMPILATION_CACHE_DIR': cache_dir,
              'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'PYTHONUNBUFFERED': '1',
              'HF_HUB_OFFLINE': '1', 'DIFFUSERS_VERBOSITY': 'error',
              'TRANSFORMERS_VERBOSITY': 'error', 'TF_CPP_MIN_LOG_LEVEL': '1'})
  env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH', '')) if p)
  return env


def main(argv=None) -> int:
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  (out / 'logs').mkdir(parents=True, exist_ok=True)
  cache_dir = tempfile.mkdtemp(prefix='accel_check_xla_cache_')
  runner = jobs_lib.Runner(args.budget, out, worker_env(args, cache_dir), REPO)
  stamp = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')
  print(f'### accelerator check, {stamp}, budget {args.budget:.0f} s, smoke={args.smoke}, '
        f'parallel={args.parallel}, python={sys.executable}', flush=True)
  try:
    plan = plan_lib.Plan(args, runner)
    plan.run()
  finally:
    runner.stop_all()
    shutil.rmtree(cache_dir, ignore_errors=True)
  logs = {r['job']: (out / r['log']).read_text(errors='replace') for r in runner.records
          if r['group'] in ('tests', 'torch') and (out / r['log']).is_file()}
  text = table.render(runner.records, header={
      'when': stamp, 'budget_s': args.budget, 'wall_s': runner.elapsed(), 'smoke': args.smoke},
      logs=logs)
  (out / 'accel_check.md').write_text(text)
  print('### TABLE (also in ' + str(out / 'accel_check.md') + ')\n' + text, flush=True)
  print(f'### done at {runner.elapsed():.0f} s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
