"""Several JAX processes as one run: joining, the one writer, barriers, agreement checks.

A multi-host run (a TPU pod slice, a multi-node GPU job, or N processes on one
CPU machine) is N copies of the same command, one per host, each driving its
own devices. `join` connects them through JAX's coordination service
(`jax.distributed.initialize`, explicit or auto-detected on Cloud TPU, SLURM,
Open MPI and Kubernetes); on CPU their collectives go over gloo (TCP), so the
whole path runs on one machine. After that every process runs the same
program on one global mesh (`core.sharding.make_mesh`), loads the dataset
itself and places its own replicas; only process 0 writes the run's files
(config, metrics, TensorBoard, report, figures, sweep markers), while every
process takes part in Orbax's saves and restores.

Failure is bounded: an unreachable coordinator or a missing process ends
`join` with one line within `timeout_s`; a process that dies makes the others
fail at their next collective when gloo sees the closed connection, and
`exit_on_error` ends each survivor with one line, skipping JAX's shutdown
barrier (which would wait for the dead process); otherwise JAX's heartbeat
(`heartbeat_timeout_s`) declares it dead and JAX itself ends the survivors,
with a message naming it (BUILD_NOTES.md: why there is no hook there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from autoaug_jax.errors import USER_ERRORS, ClusterError, ConfigError, WorkdirError


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How this process joins a run (the entry points' cluster flags).

  coordinator_address: 'HOST:PORT' of process 0 ('' = none, or auto-detected).
  num_processes, process_id: the explicit cluster (None = auto-detected).
  multihost: join a cluster JAX detects (Cloud TPU, SLURM, Open MPI, Kubernetes).
  timeout_s: how long to wait for every process to join.
  heartbeat_timeout_s: a silent process is declared dead after this long.
  """
  coordinator_address: str = ''
  num_processes: int | None = None
  process_id: int | None = None
  multihost: bool = False
  timeout_s: int = 120
  heartbeat_timeout_s: int = 60

  @property
  def requested(self) -> bool:
    return bool(self.multihost or self.coordinator_address or (self.num_processes or 1) > 1
                or self.process_id is not None)


def check(spec: ClusterSpec) -> None:
  """Refuses an incomplete or impossible explicit cluster (ConfigError, one line)."""
  if spec.multihost or not spec.requested:
    return
  missing = [flag for flag, value in (('--coordinator_address', spec.coordinator_address),
                                      ('--num_processes', spec.num_processes),
                                      ('--process_id', spec.process_id))
             if value in ('', None)]
  if missing:
    raise ConfigError(
        f'A multi-process run needs --coordinator_address=HOST:PORT, --num_processes=N and '
        f'--process_id=I together; {", ".join(missing)} missing. (Or pass --multihost to let '
        'JAX detect the cluster on Cloud TPU, SLURM, Open MPI or Kubernetes.)')
  if spec.num_processes < 1 or not 0 <= spec.process_id < spec.num_processes:
    raise ConfigError(f'--process_id={spec.process_id} with --num_processes='
                      f'{spec.num_processes}: process ids run from 0 to num_processes - 1.')
  host, _, port = spec.coordinator_address.rpartition(':')
  if not host or not port.isdigit():
    raise ConfigError(f'--coordinator_address={spec.coordinator_address!r} is not HOST:PORT '
                      '(e.g. 10.0.0.1:1234, the address of process 0\'s host).')
  for value, flag in ((spec.timeout_s, '--coordinator_timeout'),
                      (spec.heartbeat_timeout_s, '--heartbeat_timeout')):
    if value < 1:
      raise ConfigError(f'{flag}={value}: give a number of seconds >= 1.')


def join(spec: ClusterSpec) -> None:
  """Connects this process to the others of its run; nothing for a one-process run.

  Must come before JAX creates its backends (the entry points call it first).
  Raises ClusterError if the coordinator cannot be reached within `timeout_s`.
  """
  check(spec)
  if not spec.requested or (spec.num_processes == 1 and not spec.multihost):
    return
  # CPU devices of different processes talk over gloo; without it a cross-process
  # computation on CPU fails. No effect on GPU or TPU collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  explicit = bool(spec.coordinator_address)
  if explicit and spec.process_id != 0:
    _wait_for_coordinator(spec)
  who = f'process {spec.process_id if spec.process_id is not None else "?"}'
  where = spec.coordinator_address or 'the auto-detected coordinator'
  # JAX's client ends the process with a C++ fatal error (a stack dump, no
  # exception) when not every process registers in time; this watchdog says
  # why in one line first.
  watchdog = threading.Timer(spec.timeout_s, _exit_now, args=(
      f'error: {who}: not every process of the run joined through {where} within '
      f'{spec.timeout_s}s. Start all {spec.num_processes or "of the"} processes with the '
      'same --coordinator_address and --num_processes (each with its own --process_id), '
      'or raise --coordinator_timeout.',))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
        coordinator_address=spec.coordinator_address or None,
        num_processes=spec.num_processes if explicit else None,
        process_id=spec.process_id if explicit else None,
        initialization_timeout=spec.timeout_s,
        heartbeat_timeout_seconds=spec.heartbeat_timeout_s,
        # Long enough for process 0 to write the report while the others wait.
        shutdown_timeout_seconds=max(300, spec.heartbeat_timeout_s))
  except Exception as e:  # noqa: BLE001 -- XLA raises several kinds for one cause
    raise ClusterError(
        f'{who}: could not join the run through {where} within {spec.timeout_s}s '
        f'({_short(e)}). Start every process (process 0 first, on the host of '
        '--coordinator_address) with the same --num_processes, check that HOST:PORT is '
        'reachable from this host and the port is free, or raise --coordinator_timeout.'
    ) from e
  finally:
    watchdog.cancel()
  # Not jax.process_index(): that would create the backends before the config's
  # num_cpu_devices is applied.
  logging.info('Joined the run through %s as %s.', where, who)


def _wait_for_coordinator(spec: ClusterSpec) -> None:
  """Waits until process 0's coordination service accepts connections.

  JAX's client aborts the whole process (a C++ fatal error, no exception)
  when it cannot register with the coordinator in time, so a missing or
  unreachable process 0 is detected here first, with a plain TCP connect.
  """
  host, _, port = spec.coordinator_address.rpartition(':')
  deadline = time.monotonic() + spec.timeout_s
  while True:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ClusterError(
            f'process {spec.process_id}: could not join the run through '
            f'{spec.coordinator_address} within {spec.timeout_s}s (nothing accepts connections '
            f'there: {e.strerror or e}). Start process 0 on the host of --coordinator_address '
            'with the same --num_processes, check that HOST:PORT is reachable from this host, '
            'or raise --coordinator_timeout.') from e
      time.sleep(0.5)


def _short(error: BaseException, limit: int = 200) -> str:
  text = ' '.join(str(error).split())
  return text if len(text) <= limit else text[:limit - 3] + '...'


def multiprocess() -> bool:
  return jax.process_count() > 1


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached `name` (nothing for one process)."""
  if multiprocess():
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def primary_first(name: str) -> Iterator[None]:
  """Runs the block on process 0, then on the others: what process 0 writes (a cleaned
  checkpoint folder, a claimed directory) is on disk before the others read it."""
  if multiprocess() and not is_primary():
    barrier(name)
  yield
  if multiprocess() and is_primary():
    barrier(name)


def _gather(values: np.ndarray) -> np.ndarray:
  """[P, ...]: `values` of every process, on every process."""
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(values))


def check_same_everywhere(text: str, what: str, fix: str) -> None:
  """Raises ConfigError on every process unless all processes hold the same `text`."""
  if not multiprocess():
    return
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.uint32).copy()
  digests = _gather(digest).reshape(jax.process_count(), -1)
  differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
  if differ:
    raise ConfigError(f'process(es) {differ} {what} than process 0; {fix}')


def check_shared_directory(path: str, flag: str) -> None:
  """Raises WorkdirError on every process unless all of them see one directory at `path`.

  Process 0 writes a probe file named by a random token it shares; each process
  looks for it. Checkpoints, resumes and the single writer all rely on this.
  """
  if not multiprocess():
    return
  from jax.experimental import multihost_utils
  token = int(np.asarray(multihost_utils.broadcast_one_to_all(
      np.frombuffer(os.urandom(4), np.uint32).copy()))[0])
  probe = os.path.join(path, f'.autoaug-shared-probe-{token:08x}')
  if is_primary():
    with open(probe, 'w') as f:
      f.write('written by process 0\n')
  barrier('shared-probe-written')
  seen = _gather(np.array([os.path.exists(probe)]))
  barrier('shared-probe-read')
  if is_primary():
    os.remove(probe)
  blind = [i for i, s in enumerate(seen.reshape(-1)) if not s]
  if blind:
    raise WorkdirError(
        f'{flag}={path} is not one shared directory: process(es) {blind} cannot see the file '
        'process 0 wrote there. Every process of a run reads and writes the same checkpoints '
        'and files: give all of them a path on storage every host mounts (NFS, a parallel '
        'file system, a gcsfuse bucket), under the same name.')


def exit_on_error(fn: Callable[[], Any]) -> Any:
  """Runs an entry point's work; a user error or a dead peer ends it with one line.

  One process: a user error exits with 'error: ...' (status 1). Several: the
  line names this process, and the exit skips JAX's shutdown barrier, which
  would wait for a dead process and then abort with a stack trace.
  """
  try:
    return fn()
  except USER_ERRORS as e:
    _exit(f'error: {e}')
  except jax.errors.JaxRuntimeError as e:
    if not multiprocess():
      raise
    _exit(f'error: a collective operation with the other processes failed ({_short(e)}). '
          'Another process of this run stopped or died (see its log); this one stops too. '
          f'Start all {jax.process_count()} processes again with the same command: the run '
          'resumes from its latest checkpoint.')


def _exit_now(message: str) -> None:
  logging.error('%s', message)
  print(message, file=sys.stderr, flush=True)
  os._exit(1)


def _exit(message: str) -> None:
  if not multiprocess():
    logging.error('%s', message)
    sys.exit(message)
  sys.stdout.flush()
  _exit_now(f'process {jax.process_index()} of {jax.process_count()}: {message}')
