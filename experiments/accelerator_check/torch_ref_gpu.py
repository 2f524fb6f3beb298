"""Runs ../shared/tools/torch_ref/torch_metastep_bench.py (a copy, unedited) on the GPU.

usage: python torch_ref_gpu.py REF.py [sync] -- IMG [IMG ...] -- REF_ARGS...

The accelerator check's side-by-side (check.py runs it with the device's torch).
The reference file is loaded as a module and NOT edited; this wrapper only
- sets torch's default device to cuda (models, parameters, Adam state on the GPU);
- replaces its `make_tasks` by one that builds the tasks with the same CPU
  generator (the reference passes a CPU torch.Generator to torch.rand, which a
  cuda default device rejects) and moves them to the GPU;
- with `sync`, wraps `one_meta_step` with torch.cuda.synchronize() at its end,
  to check that the reference's own per-step timing includes the GPU work;
- prints torch.cuda.max_memory_allocated() per run (the reference reports host RSS).
Each image size is one call of the reference's main() in this one process.
"""
import importlib.util
import sys

import torch

ref_path = sys.argv[1]
rest = sys.argv[2:]
sync = bool(rest) and rest[0] == 'sync'
if sync:
  rest = rest[1:]
assert rest[0] == '--', rest
i = rest.index('--', 1)
sizes, ref_args = rest[1:i], rest[i + 1:]

dev = 'cuda' if torch.cuda.is_available() else 'cpu'
spec = importlib.util.spec_from_file_location('torch_metastep_bench', ref_path)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

_make_tasks = ref.make_tasks


def make_tasks_on_device(*args, **kwargs):
  with torch.device('cpu'):
    tasks = _make_tasks(*args, **kwargs)
  return [tuple(t.to(dev) for t in task) for task in tasks]


ref.make_tasks = make_tasks_on_device
if sync:
  _one = ref.one_meta_step

  def one_meta_step_synced(*args, **kwargs):
    out = _one(*args, **kwargs)
    if dev == 'cuda':
      torch.cuda.synchronize()
    return out

  ref.one_meta_step = one_meta_step_synced

torch.set_default_device(dev)
print(f'wrapper: device={dev} torch={torch.__version__} '
      f'gpu={torch.cuda.get_device_name() if dev == "cuda" else "-"} sync={sync} '
      f'cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} '
      f'matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}', flush=True)
for img in sizes:
  if dev == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  sys.argv = [ref_path, '--img', img] + ref_args
  ref.main()
  if dev == 'cuda':
    print(f'wrapper: img={img} sync={sync} torch_cuda_max_memory_allocated_mb='
          f'{torch.cuda.max_memory_allocated() / 2**20:.1f}', flush=True)
