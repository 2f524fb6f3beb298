"""Our benchmark against a peer implementation's, run as alternating processes.

A speed claim against another implementation (the torch.func reference, a
colleague's PyTorch code) only holds if both ran on the same machine in the
same hour: this repository's CPU moves 30-50% between hours (BUILD_NOTES.md),
more than the ratios in question. So each pair runs both programs back to
back as fresh processes, in ABBA order (ours first in even pairs, the peer
first in odd ones, so neither always meets a cold or a warm machine), and the
per-pair ratio of meta-steps/s, ours / peer, is the unit: its geometric mean
and 95% t-interval on the log scale (`statistics.paired_ratio`), as
`benchmark --compare` does within one process. Peak resident memory is taken
from the kernel for each process (`wait4`), so both sides are measured alike;
it is the largest single process of a side's process tree (a peer behind
`bash -c` or `uv run` reads as itself, one that starts worker processes as its
largest). An even number of pairs balances who goes first. The entry point is
`experiments/side_by_side.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import string
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

from autoaug_jax import statistics
from autoaug_jax.errors import BenchmarkError, ConfigError

# What the torch.func reference (`torch_metastep_bench.py`) prints last.
TORCH_REF_PATTERN = r'torch_meta_steps_per_s=([0-9.eE+-]+)'
_TAIL_CHARS = 1500


@dataclasses.dataclass(frozen=True)
class Measured:
  """One finished process: its merged stdout/stderr, exit code and peak RSS (MB)."""
  output: str
  returncode: int
  peak_rss_mb: float


def ours_command(config: str, image_size: int, overrides: Sequence[str], steps: int,
                 warmup: int) -> list[str]:
  """The benchmark's command line for our side (this interpreter, no FLOP count)."""
  return [sys.executable, '-m', 'autoaug_jax.benchmark', f'--config={config}',
          f'--config.image_size={image_size}', *[f'--config.{o}' for o in overrides],
          f'--steps={steps}', f'--warmup={warmup}', '--noflops']


def peer_command(template: str, image_size: int, steps: int, warmup: int) -> list[str]:
  """The peer's command line: `template` with {image_size}, {steps} and {warmup} filled in."""
  try:
    fields = {re.split(r'[.\[]', name)[0]
              for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    filled = template.format(image_size=image_size, steps=steps, warmup=warmup)
  except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
    raise ConfigError(f'--peer {template!r} cannot be filled in ({type(e).__name__}: {e}): '
                      'it may use only {image_size}, {steps} and {warmup}, and literal braces '
                      'are written {{ and }}.') from e
  if 'image_size' not in fields:
    # A size written into the peer's command would silently time another workload.
    raise ConfigError(f'--peer {template!r} does not use {{image_size}}: write the peer\'s size '
                      'flag as e.g. --img {image_size}, so both sides run --image_size.')
  try:
    cmd = shlex.split(filled)
  except ValueError as e:
    raise ConfigError(f'--peer {template!r} is not a valid command line ({e}): check its '
                      'quotes.') from e
  return cmd


# A fresh interpreter (a few MB) starts the command and reads its peak RSS with
# `wait4`. Not this process: Linux carries a process's peak RSS into its
# children through fork and exec, so a child of this JAX-importing process
# would read at least this one's peak (a 2 MB program read as 250 MB).
_LAUNCHER = """\
import os, subprocess, sys
try:
  proc = subprocess.Popen(sys.argv[2:])
except OSError as e:
  print(f'{sys.argv[2]!r} could not start: {e}', flush=True)
  sys.exit(127)
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], 'w') as f:
  f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(cmd: Sequence[str]) -> Measured:
  """Runs `cmd` to completion: its output (stdout and stderr), exit code and own peak RSS."""
  with tempfile.TemporaryDirectory() as tmp:
    rss_path = os.path.join(tmp, 'peak_rss_kib')
    done = subprocess.run([sys.executable, '-c', _LAUNCHER, rss_path, *cmd],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not os.path.exists(rss_path):
      if done.returncode == 127:
        raise BenchmarkError(f'{done.stdout.strip()}. Check the program\'s path.')
      raise BenchmarkError(f'the process running {shlex.join(cmd)} {_ended(done.returncode)} '
                           f'before reporting; its output ended:\n{_tail(done.stdout)}')
    with open(rss_path) as f:
      peak_kib = int(f.read())
  return Measured(done.stdout, done.returncode, peak_kib / 1024)  # Linux counts KiB


def _tail(output: str) -> str:
  return output[-_TAIL_CHARS:].strip()


def _ended(returncode: int) -> str:
  """How a process ended, in words (signal N: -N from Popen, 128 + N through the launcher)."""
  if returncode < 0 or returncode > 128:
    signal = -returncode if returncode < 0 else returncode - 128
    why = ' (SIGKILL: often the out-of-memory killer)' if signal == 9 else ''
    return f'was killed by signal {signal}{why}'
  return f'exited {returncode}'


def _rate(value: str, who: str, measured: Measured) -> float:
  try:
    rate = float(value)
  except ValueError:
    rate = math.nan
  if not (math.isfinite(rate) and rate > 0):
    raise BenchmarkError(f'{who} reported {value!r} meta-steps/s, not a positive number; its '
                         f'output ended:\n{_tail(measured.output)}')
  return rate


def ours_rate(measured: Measured, cmd: Sequence[str]) -> float:
  """meta_steps_per_s from the benchmark's last JSON line."""
  if measured.returncode == 0:
    for line in reversed(measured.output.splitlines()):
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and 'meta_steps_per_s' in record:
        return _rate(str(record['meta_steps_per_s']), 'our benchmark', measured)
  raise BenchmarkError(f'our benchmark ({shlex.join(cmd)}) {_ended(measured.returncode)} '
                       f'without its JSON line; its output ended:\n{_tail(measured.output)}')


def peer_rate(measured: Measured, cmd: Sequence[str], pattern: str) -> float:
  """The peer's meta-steps/s: group 1 of the last match of `pattern` in its output
  (^ and $ match at each line)."""
  if measured.returncode != 0:
    raise BenchmarkError(f'the peer ({shlex.join(cmd)}) {_ended(measured.returncode)}; its '
                         f'output ended:\n{_tail(measured.output)}')
  matches = list(re.finditer(pattern, measured.output, re.MULTILINE))
  if not matches:
    raise BenchmarkError(f'the peer ({shlex.join(cmd)}) printed nothing matching '
                         f'--peer_pattern "{pattern}"; its output ended:\n'
                         f'{_tail(measured.output)}')
  return _rate(matches[-1].group(1) or '', 'the peer', measured)


def side_by_side(ours_cmd: Sequence[str], peer_cmd: Sequence[str], pairs: int,
                 pattern: str = TORCH_REF_PATTERN,
                 run: Callable[[Sequence[str]], Measured] = run_measured,
                 log: Callable[[str], None] = print) -> dict:
  """Runs `pairs` pairs of both commands in ABBA order; the ratio is ours / peer in steps/s.

  Returns:
    A flat record: both sides' meta-steps/s and peak RSS per pair, the
    per-pair ratios, their geometric mean with its 95% interval, and
    the order each pair ran in.
  """
  if pairs < 2:
    raise ConfigError(f'--pairs={pairs}: an interval needs at least 2 pairs (6 resolved about '
                      '5% on this repository\'s CPU).')
  try:
    groups = re.compile(pattern).groups
  except re.error as e:
    raise ConfigError(f'--peer_pattern "{pattern}" is not a regular expression: {e}.') from e
  if groups < 1:
    raise ConfigError(f'--peer_pattern "{pattern}" has no group: put parentheses around the '
                      'figure, e.g. "steps_per_s=([0-9.eE+-]+)".')
  sides = {'ours': (ours_cmd, lambda m: ours_rate(m, ours_cmd)),
           'peer': (peer_cmd, lambda m: peer_rate(m, peer_cmd, pattern))}
  rates = {'ours': [], 'peer': []}
  rss = {'ours': [], 'peer': []}
  orders = []
  for p in range(pairs):
    order = ('ours', 'peer') if p % 2 == 0 else ('peer', 'ours')
    orders.append(','.join(order))
    for side in order:
      cmd, rate_of = sides[side]
      measured = run(cmd)
      rates[side].append(rate_of(measured))
      rss[side].append(measured.peak_rss_mb)
      log(f'pair {p + 1}/{pairs} {side}: {rates[side][-1]:.4g} meta-steps/s, '
          f'peak RSS {measured.peak_rss_mb:.0f} MB')
  ratio = statistics.paired_ratio(rates['peer'], rates['ours'])
  return {
      'pairs': pairs,
      'order': orders,
      'ours_meta_steps_per_s': rates['ours'],
      'peer_meta_steps_per_s': rates['peer'],
      'ours_peak_rss_mb': rss['ours'],
      'peer_peak_rss_mb': rss['peer'],
      'ratio_per_pair': list(ratio.per_pair),
      'ratio': ratio.geometric_mean,
      'ratio_lo': ratio.lo,
      'ratio_hi': ratio.hi,
  }
