"""Flags every entry point shares: how this process joins a multi-process run.

  One host:       nothing to add.
  Explicit:       --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                  (the same command on every host, I = 0..N-1; HOST is process 0's)
  Auto-detected:  --multihost (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes)

`run(fn)` joins the cluster these flags describe and runs the entry point's
work; `run.cluster` does both.
"""

from collections.abc import Callable
from typing import Any

from absl import flags

from autoaug_jax.run import cluster

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', "HOST:PORT of process 0's host, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Processes in the run (with --coordinator_address).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's id, 0..num_processes-1.")
_MULTIHOST = flags.DEFINE_boolean(
    'multihost', False, 'Join the cluster JAX detects (Cloud TPU, SLURM, Open MPI, Kubernetes).')
_TIMEOUT = flags.DEFINE_integer('coordinator_timeout', 120,
                                'Seconds to wait for every process to join.')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout', 60, 'Seconds of silence after which a process is taken for dead and '
    'the others stop.')


def spec() -> cluster.ClusterSpec:
  return cluster.ClusterSpec(
      coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value, multihost=_MULTIHOST.value, timeout_s=_TIMEOUT.value,
      heartbeat_timeout_s=_HEARTBEAT.value)


def run(fn: Callable[[], Any]) -> Any:
  """Joins the run's processes, then `fn()`; user errors and dead peers end in one line."""
  return cluster.exit_on_error(lambda: (cluster.join(spec()), fn())[1])
