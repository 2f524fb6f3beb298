"""The accelerator check's processes: start, bound, kill, collect (check.py's runner).

Every step of the check is a `Job`: a command run in its own process group
(so that a timeout ends the step's whole tree, and nothing else), its output
in logs/NAME.log, its `RESULT {json}` lines (worker.py) merged into one dict,
and one record appended to results.jsonl when it ends, is killed or is
skipped. The `Runner` holds the budget: a job starts only if its minimum
time is left, and is killed at its timeout or at the deadline it was given,
whichever comes first. Foreground jobs run one at a time; background jobs
(the compiles, the tests) run alongside, and a foreground job records which
of them were running while it was timed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import time


@dataclasses.dataclass
class Job:
  name: str
  group: str                 # env, tests, meta, resnet, diffusion, torch (table, --only)
  argv: list[str]
  timeout: float             # seconds, at most
  min_s: float = 5.0         # skipped when less than this is left
  env: dict = dataclasses.field(default_factory=dict)  # on top of the runner's
  spec: dict = dataclasses.field(default_factory=dict)  # what it measures (for the table)
  # Filled in by the runner.
  proc: subprocess.Popen | None = None
  started: float = 0.0
  kill_at: float = 0.0
  wall_s: float = 0.0
  rc: int | None = None
  killed: bool = False
  skipped: str = ''
  result: dict = dataclasses.field(default_factory=dict)
  concurrent: set = dataclasses.field(default_factory=set)

  @property
  def done(self) -> bool:
    return bool(self.skipped) or self.rc is not None

  @property
  def ok(self) -> bool:
    return self.rc == 0 and not self.killed


def parse_results(log_text: str) -> dict:
  """`RESULT {json}` lines merged in order (later keys win)."""
  merged = {}
  for line in log_text.splitlines():
    if line.startswith('RESULT '):
      try:
        merged.update(json.loads(line[len('RESULT '):]))
      except ValueError:
        continue
  return merged


class Runner:
  """Starts and polls jobs within a wall-clock budget; keeps every job's record."""

  def __init__(self, budget_s: float, out: pathlib.Path, env: dict, cwd: pathlib.Path):
    self.t0 = time.monotonic()
    self.deadline = self.t0 + budget_s
    self.out = out
    self.env = env
    self.cwd = cwd
    self.background: list[Job] = []
    self.records: list[dict] = []
    self._jsonl = out / 'results.jsonl'
    self._jsonl.write_text('')

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def left(self, until: float | None = None) -> float:
    return min(self.deadline, until or self.deadline) - time.monotonic()

  def log_path(self, job: Job) -> pathlib.Path:
    return self.out / 'logs' / f'{job.name.replace("/", "_").replace(" ", "_")}.log'

  def start(self, job: Job, until: float | None = None) -> bool:
    """Starts `job` if its minimum time is left before `until` (default: the budget's
    end); False (and a 'skipped' record) otherwise."""
    left = self.left(until)
    if left < job.min_s:
      job.skipped = f'{max(left, 0):.0f} s left < {job.min_s:.0f} s'
      print(f'### SKIP {job.name}: {job.skipped}', flush=True)
      self.record(job)
      return False
    timeout = max(1.0, min(job.timeout, left - 2))
    print(f'### BEGIN {job.name} at {self.elapsed():.0f} s (timeout {timeout:.0f} s)', flush=True)
    log = open(self.log_path(job), 'w')  # noqa: SIM115 -- the child writes it; closed at exit
    log.write(f'$ {" ".join(job.argv)}\n')
    log.flush()
    job.proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                env={**self.env, **job.env}, cwd=self.cwd,
                                start_new_session=True)
    log.close()
    job.started = time.monotonic()
    job.kill_at = job.started + timeout
    return True

  def _kill(self, job: Job) -> None:
    """Ends the job's process group (started with start_new_session: its own)."""
    job.killed = True
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
      try:
        os.killpg(job.proc.pid, sig)
      except ProcessLookupError:
        break
      try:
        job.proc.wait(wait)
        break
      except subprocess.TimeoutExpired:
        continue

  def poll(self, job: Job) -> bool:
    """True once the job has ended (killing it past its time)."""
    if job.done:
      return True
    if job.proc is None:
      return False
    if job.proc.poll() is None:
      if time.monotonic() < job.kill_at:
        return False
      self._kill(job)
    job.rc = job.proc.wait()
    job.wall_s = time.monotonic() - job.started
    job.result = parse_results(self.log_path(job).read_text(errors='replace'))
    state = 'KILLED (timeout)' if job.killed else f'rc={job.rc}'
    print(f'### END {job.name} {state} wall={job.wall_s:.0f} s', flush=True)
    self.record(job)
    return True

  def record(self, job: Job) -> None:
    record = {'job': job.name, 'group': job.group, 'spec': job.spec, 'rc': job.rc,
              'killed': job.killed, 'skipped': job.skipped, 'wall_s': round(job.wall_s, 2),
              'concurrent': sorted(job.concurrent), 'result': job.result,
              'log': str(self.log_path(job).relative_to(self.out))}
    self.records.append(record)
    with open(self._jsonl, 'a') as f:
      f.write(json.dumps(record, default=str) + '\n')

  def tick(self) -> None:
    """Polls the background jobs (ending those past their time)."""
    for job in list(self.background):
      if self.poll(job):
        self.background.remove(job)

  def start_background(self, job: Job, until: float | None = None) -> bool:
    if self.start(job, until):
      self.background.append(job)
      return True
    return False

  def run(self, job: Job, until: float | None = None) -> Job:
    """Runs a foreground job to its end, polling the background meanwhile."""
    if not self.start(job, until):
      return job
    while not self.poll(job):
      job.concurrent |= {b.name for b in self.background if not b.done}
      self.tick()
      time.sleep(0.2)
    self.tick()
    return job

  def wait(self, jobs: list[Job], until: float | None = None) -> None:
    """Polls until every job in `jobs` has ended or `until` (then kills them)."""
    end = min(self.deadline, until or self.deadline)
    while not all(j.done or j.proc is None for j in jobs):
      if time.monotonic() >= end:
        for j in jobs:
          if j.proc is not None and not j.done:
            j.kill_at = 0  # past its time: poll kills it
        self.tick()
        break
      self.tick()
      time.sleep(0.2)

  def stop_all(self) -> None:
    """At exit: kills whatever is still running (each job's own process group)."""
    for job in list(self.background):
      job.kill_at = 0
    self.tick()
