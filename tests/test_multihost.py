"""Several JAX processes as one run, over loopback on this CPU machine.

A multi-host run (a TPU pod slice, a multi-node GPU job) is N copies of one
command. Here N = 2 processes with 2 CPU devices each stand for it, their
collectives over gloo: the same code path as on a cluster but for the
transport. The checks: 2 x 2 is the same run as 1 x 4 (meta-losses to float
rounding, the same report); only process 0 writes the run's files; a killed
process stops the other with one line, and the run resumes on another layout;
and the mistakes a cluster invites (an unreachable coordinator, a workdir
that is not shared, processes started with different configs) are refused
with one line each.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from autoaug_jax.errors import ConfigError
from autoaug_jax.run import cluster

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ARGS = (f'--config={REPO}/configs/tiny.py', "--config.eval.methods=('none','learned')")
# A lost peer is declared after this long at the latest (gloo usually notices at once).
HEARTBEAT = 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(launcher: tuple[str, ...]) -> list[str]:
  if not launcher:
    return [sys.executable, '-m', 'autoaug_jax.main']
  return [sys.executable, os.path.join(HERE, launcher[0]), *launcher[1:]]


def _cluster(logs, workdirs, *extra, launchers=((), ()), per_process=((), ()), timeout=600):
  """Starts processes 0 and 1 of one run; returns [(returncode, stderr, end time)]."""
  port = _free_port()
  procs = []
  for i, (workdir, launcher) in enumerate(zip(workdirs, launchers, strict=True)):
    args = [*ARGS, '--config.num_cpu_devices=2', f'--workdir={workdir}',
            f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
            f'--process_id={i}', f'--heartbeat_timeout={HEARTBEAT}', *extra, *per_process[i]]
    # Files, not pipes: a process blocked on a full pipe would stall the collectives.
    err = open(logs / f'process{i}.err', 'w')  # noqa: SIM115 -- closed below
    procs.append((subprocess.Popen(_command(launcher) + args, cwd=REPO, stdout=err,
                                   stderr=subprocess.STDOUT), err))
  out, deadline = [None, None], time.monotonic() + timeout
  try:
    while None in out:
      for i, (proc, err) in enumerate(procs):
        if out[i] is None and proc.poll() is not None:
          err.close()
          out[i] = (proc.returncode, (logs / f'process{i}.err').read_text(), time.monotonic())
      assert time.monotonic() < deadline, f'the run took over {timeout}s'
      time.sleep(0.2)
  finally:
    for proc, err in procs:
      proc.kill()
      err.close()
  return out


def _single(workdir, *extra):
  return subprocess.run(
      [*_command(()), *ARGS, '--config.num_cpu_devices=4', f'--workdir={workdir}', *extra],
      cwd=REPO, capture_output=True, text=True, timeout=600)


def _meta_losses(workdir) -> list[float]:
  lines = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [d['train/meta_loss'] for d in lines if 'train/meta_loss' in d]


def _report(workdir) -> list[str]:
  """report.md without the lines that name the layout or the time taken."""
  return [line for line in (workdir / 'report.md').read_text().splitlines()
          if 'compiled as' not in line and 'device' not in line and ' s' not in line]


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  """The reference: the same run as 1 process x 4 devices."""
  workdir = tmp_path_factory.mktemp('one_process')
  out = _single(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_cluster_flags_are_checked_before_joining():
  with pytest.raises(ConfigError, match='--process_id missing'):
    cluster.check(cluster.ClusterSpec(coordinator_address='h:1', num_processes=2))
  with pytest.raises(ConfigError, match='process ids run from 0 to num_processes - 1'):
    cluster.check(cluster.ClusterSpec(coordinator_address='h:1', num_processes=2,
                                      process_id=2))
  with pytest.raises(ConfigError, match="'h1' is not HOST:PORT"):
    cluster.check(cluster.ClusterSpec(coordinator_address='h1', num_processes=2,
                                      process_id=0))
  cluster.check(cluster.ClusterSpec(multihost=True))  # JAX detects the rest
  assert not cluster.ClusterSpec().requested


@pytest.mark.parametrize('process_id, message', [
    (1, 'could not join the run through 127.0.0.1:{port} within 5s (nothing accepts'),
    (0, 'not every process of the run joined through 127.0.0.1:{port} within 5s')])
def test_a_lone_process_says_so_in_one_line_within_the_timeout(tmp_path, process_id,
                                                               message):
  """Process 1 without a coordinator; process 0 (the coordinator) without process 1."""
  port = _free_port()
  start = time.monotonic()
  out = subprocess.run(
      [*_command(()), *ARGS, f'--workdir={tmp_path / "w"}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={process_id}', '--coordinator_timeout=5'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  seconds = time.monotonic() - start
  assert out.returncode == 1, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: process {process_id}: ')
  assert message.format(port=port) in last, last
  assert 'Traceback' not in out.stderr and 'Fatal' not in out.stderr
  assert seconds < 60
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_two_processes_are_one_run_with_one_writer(one_process, tmp_path):
  workdir = tmp_path / 'w'
  audit = [('write_audit.py', str(workdir), str(tmp_path / f'writes{i}.log')) for i in (0, 1)]
  out = _cluster(tmp_path, [workdir, workdir], launchers=audit)
  for rc, err, _ in out:
    assert rc == 0, err[-3000:]

  np.testing.assert_allclose(_meta_losses(workdir), _meta_losses(one_process), rtol=1e-5)
  assert len(_meta_losses(workdir)) == 4  # one line per step: one writer
  assert _report(workdir) == _report(one_process)
  assert '4 x cpu (cpu) over 2 processes' in (workdir / 'report.md').read_text()

  writes = [{line.split('\t')[1] for line in (tmp_path / f'writes{i}.log').read_text()
             .splitlines()} for i in (0, 1)]
  # Process 1 takes part in Orbax's saves (its own part of each checkpoint) and
  # writes nothing else: not a config, metric, event file, report, figure or manifest.
  assert all(p.startswith('checkpoints') for p in writes[1]), sorted(writes[1])
  assert not any(p.endswith('manifest.json') for p in writes[1])
  files = {os.path.relpath(os.path.join(d, f), workdir)
           for d, _, names in os.walk(workdir) for f in names}
  run_files = {f for f in files if not f.startswith('checkpoints')}
  assert {'config.json', 'metrics.jsonl', 'report.md', 'results.json'} <= run_files
  assert any(f.startswith('tensorboard') or 'events' in f for f in run_files), run_files
  for f in run_files:
    # Written by process 0 (under this name or as a temporary renamed into place).
    assert f in writes[0] or any(os.path.dirname(w) == os.path.dirname(f) for w in writes[0])
    assert f not in writes[1]


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_run_resumes_elsewhere(one_process,
                                                                          tmp_path):
  workdir = tmp_path / 'w'
  out = _cluster(tmp_path, [workdir, workdir],
                 launchers=((), ('fault_injection.py', 'meta_step', '3')))
  (rc0, err0, end0), (rc1, err1, end1) = out
  assert rc1 == -9 and 'SIGKILL at meta_step 3' in err1, err1[-2000:]
  # The survivor stops within the heartbeat timeout, naming the dead process: with our
  # line when its next collective fails first (gloo sees the closed connection), else
  # with JAX's own (its coordination service ends the process from C++, no hook).
  ours = ('process 0 of 2: error: a collective operation' in err0
          and 'resumes from its latest checkpoint' in err0)
  theirs = re.search(r'tasks are unhealthy \(stopped sending heartbeats\):\s+1\s', err0)
  assert rc0 != 0 and (ours or theirs), err0[-3000:]
  assert end0 - end1 < HEARTBEAT + 30

  # The survivor wrote a consistent checkpoint (latest/2) that one process with
  # four devices continues, saying so, to the reference run's result.
  resumed = _single(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'latest/2 was written by 2 process(es) with 4 device(s)' in resumed.stderr
  np.testing.assert_allclose(_meta_losses(workdir), _meta_losses(one_process), rtol=1e-5)
  assert _report(workdir) == _report(one_process)
  assert '- **devices**: 4 x cpu (cpu);' in (workdir / 'report.md').read_text()


@pytest.mark.slow
def test_a_workdir_that_is_not_shared_is_refused(tmp_path):
  out = _cluster(tmp_path, [tmp_path / 'w0', tmp_path / 'w1'], timeout=300)
  for rc, err, _ in out:
    assert rc == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert f'--workdir={tmp_path / "w0"}' in last or f'--workdir={tmp_path / "w1"}' in last
    assert 'is not one shared directory: process(es) [1] cannot see' in last, last
  assert not (tmp_path / 'w0' / 'config.json').exists()
  assert not (tmp_path / 'w1').exists()


@pytest.mark.slow
def test_processes_with_different_configs_are_refused(tmp_path):
  out = _cluster(tmp_path, [tmp_path / 'w', tmp_path / 'w'],
                 per_process=((), ('--config.seed=1',)), timeout=300)
  for rc, err, _ in out:
    assert rc == 1, err[-3000:]
    assert 'process(es) [1]' in err.strip().splitlines()[-1], err[-2000:]
  assert not (tmp_path / 'w' / 'config.json').exists()
