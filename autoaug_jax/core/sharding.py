"""The 1-D device mesh that tasks are sharded over.

Meta-parameters, optimiser state and the dataset are replicated; the tasks of
a meta-batch (or of an evaluation batch) are split along the mesh axis
'tasks'. The same jitted program runs on one CPU, eight GPUs or a TPU slice;
XLA inserts the cross-device mean of the meta-gradient. (`pmap` is
deprecated, and `shard_map` would silently sum `jax.grad` of replicated
values across the axis; see BUILD_NOTES.md.)
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from autoaug_jax.errors import ConfigError

TASK_AXIS = 'tasks'


def configure_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` JAX devices, one task shard each (0: leave as is).

  XLA:CPU parallelises this workload's many small ops poorly inside one
  device; running tasks side by side on per-core devices is faster (see
  BUILD_NOTES.md). Must run before JAX initialises its backends; later it only
  warns, since the program is still correct on whatever devices exist.
  """
  if count <= 0:
    return
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:
    have = len(jax.local_devices(backend='cpu'))  # per process, as count is
    if have != count:
      logging.warning('num_cpu_devices=%d not applied: JAX already runs with %d CPU devices '
                      'in this process.',
                      count, have)


# Compiling the meta-step with XLA:CPU's (default) MLIR fusion emitters took
# about 0.3-0.4 GB more memory than with the LLVM emitters: the benchmark's
# peak RSS was 0.96 GB against 0.65 GB at 32 px, 1.35-1.40 against 1.00 GB at
# 64 px, 2.95-3.00 against 2.58 GB at 128 px. Both run it at the same speed
# (BUILD_NOTES.md, "Compile memory").
_CPU_COMPILER_OPTIONS = {'xla_cpu_use_fusion_emitters': False}


def _in_xla_flags(name: str) -> bool:
  """Whether the XLA_FLAGS environment variable sets `name` (e.g. --name=value)."""
  return any(flag.lstrip('-').partition('=')[0] == name
             for flag in os.environ.get('XLA_FLAGS', '').split())


def compiler_options(mesh: Mesh) -> dict[str, bool] | None:
  """XLA options for a program compiled for `mesh` (None where it is not on CPU).

  A compile option overrides the same flag in XLA_FLAGS, so an option the user
  sets there is left out: their setting wins (e.g.
  XLA_FLAGS=--xla_cpu_use_fusion_emitters=true for the MLIR emitters).
  """
  if mesh.devices.flat[0].platform != 'cpu':
    return None
  return {name: value for name, value in _CPU_COMPILER_OPTIONS.items()
          if not _in_xla_flags(name)} or None


def make_mesh(num_devices: int = 0) -> Mesh:
  """A mesh over `num_devices` devices (0: all of them), each process's kept together.

  With several processes the mesh spans all of them: devices are ordered by
  process, then id, so a host's devices are neighbours (its tasks' results
  stay on the host until the meta-gradient's mean), and `num_devices` takes
  the same number from every process.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  if num_devices > len(devices):
    raise ConfigError(
        f'num_devices={num_devices} but only {len(devices)} {devices[0].platform} devices '
        'are visible; lower num_devices (0 uses all).')
  processes = jax.process_count()
  if num_devices and processes > 1:
    if num_devices % processes:
      raise ConfigError(
          f'num_devices={num_devices} does not split evenly over the run\'s {processes} '
          f'processes; use a multiple of {processes}, or 0 for all {len(devices)} devices.')
    per = num_devices // processes
    devices = [d for p in range(processes)
               for d in [d for d in devices if d.process_index == p][:per]]
  else:
    devices = devices[:num_devices or len(devices)]
  return Mesh(np.array(devices), (TASK_AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def _processes(mesh: Mesh) -> int:
  """How many processes own the mesh's devices."""
  return len({d.process_index for d in mesh.devices.flat})


def describe(mesh: Mesh) -> str:
  """'N x platform (device kind)[ over P processes]', as reports and the benchmark
  name a mesh."""
  d = mesh.devices.flat[0]
  processes = _processes(mesh)
  return (f'{mesh.devices.size} x {d.platform} ({d.device_kind})'
          + (f' over {processes} processes' if processes > 1 else ''))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(tree, mesh: Mesh):
  """Host values (a pytree; None leaves stay None) replicated on every device of the mesh.

  Every process passes the same values, computed or loaded by itself (same
  seed, same files). With one process this is `jax.device_put`. With several,
  each process places only its own devices' copies: `device_put` onto a
  sharding that spans processes would first gather every process's value to
  check they agree, the whole dataset across hosts.
  """
  rep = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, rep)

  def put(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, rep, lambda index: host[index])

  return jax.tree.map(put, tree)


def task_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the mesh's task axis."""
  return NamedSharding(mesh, P(TASK_AXIS))


def check_divisible(count: int, mesh: Mesh, key: str) -> None:
  """Tasks must split evenly over devices; raises ConfigError naming the key."""
  n = mesh.devices.size
  if count % n:
    processes = _processes(mesh)
    over = f'{n} devices' + (f' ({processes} processes x {n // processes})'
                             if processes > 1 else '')
    raise ConfigError(
        f'{key}={count} does not split evenly over {over}; use a multiple of {n} '
        f'(e.g. {key}={((count + n - 1) // n) * n}) or set num_devices.')


def padded(count: int, mesh: Mesh) -> int:
  """`count` rounded up to a multiple of the number of devices."""
  n = mesh.devices.size
  return ((count + n - 1) // n) * n
