"""Side by side with a peer implementation (experiments/side_by_side.py): the ABBA order, the
ratio, both sides' figures and peak RSS, and the errors a user can cause."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from autoaug_jax import statistics
from autoaug_jax.errors import BenchmarkError, ConfigError
from autoaug_jax.run import side_by_side as sbs

OURS = ['ours-bench']
PEER = ['peer-bench']


def _fake_runs(ours_rates, peer_rates):
  """A `run` that answers like our benchmark and the torch.func reference, in call order."""
  calls = []
  ours, peer = iter(ours_rates), iter(peer_rates)

  def run(cmd):
    calls.append(cmd[0])
    if cmd == OURS:
      record = {'meta_steps_per_s': next(ours), 'compile_s': 1.0}
      return sbs.Measured(f'   meta_steps_per_s: x\n{json.dumps(record)}\n', 0, 1000.0)
    return sbs.Measured(f'result {{}}\ntorch_meta_steps_per_s={next(peer)}\n', 0, 2000.0)
  return run, calls


def test_pairs_alternate_and_the_ratio_is_ours_over_the_peer():
  ours, peer = [0.12, 0.10, 0.13, 0.11], [0.08, 0.09, 0.08, 0.075]
  run, calls = _fake_runs(ours, peer)
  lines = []
  result = sbs.side_by_side(OURS, PEER, 4, run=run, log=lines.append)
  assert calls == ['ours-bench', 'peer-bench', 'peer-bench', 'ours-bench'] * 2
  assert result['order'] == ['ours,peer', 'peer,ours'] * 2
  assert result['ours_meta_steps_per_s'] == ours and result['peer_meta_steps_per_s'] == peer
  np.testing.assert_allclose(result['ratio_per_pair'], np.divide(ours, peer))
  expected = statistics.paired_ratio(peer, ours)
  assert (result['ratio'], result['ratio_lo'], result['ratio_hi']) == pytest.approx(
      (expected.geometric_mean, expected.lo, expected.hi))
  assert result['ratio_lo'] < result['ratio'] < result['ratio_hi']
  assert result['ours_peak_rss_mb'] == [1000.0] * 4 and result['peer_peak_rss_mb'] == [2000.0] * 4
  assert len(lines) == 8 and lines[1].startswith('pair 1/4 peer: 0.08 ')


def test_the_last_match_and_our_last_json_line_count():
  assert sbs.peer_rate(sbs.Measured('a=1\nwarm a=2\na=3.5e-2\n', 0, 1), PEER,
                       r'a=([0-9.e-]+)') == 0.035
  # ^ and $ anchor at lines; group 1 counts when there are more.
  assert sbs.peer_rate(sbs.Measured('x\nrate 0.25 /s\nrate 0.5 /s\ny', 0, 1), PEER,
                       r'^rate (\S+) (/s)$') == 0.5
  out = '{"meta_steps_per_s": 1.0}\n{"other": 2}\n{"meta_steps_per_s": 3.0}\nbye\n'
  assert sbs.ours_rate(sbs.Measured(out, 0, 1), OURS) == 3.0


def test_a_failed_or_silent_side_names_itself_and_shows_its_output():
  with pytest.raises(BenchmarkError, match=r'(?s)printed nothing matching '
                     r'--peer_pattern "x=\(\\d\+\)".*usage: peer-bench'):
    sbs.peer_rate(sbs.Measured('usage: peer-bench [-h]\n', 0, 1), PEER, r'x=(\d+)')
  # A figure printed before a crash is not a result.
  with pytest.raises(BenchmarkError, match=r'(?s)\(peer-bench\) exited 1;.*Traceback'):
    sbs.peer_rate(sbs.Measured('torch_meta_steps_per_s=0.1\nTraceback\n', 1, 1), PEER,
                  sbs.TORCH_REF_PATTERN)
  with pytest.raises(BenchmarkError, match='was killed by signal 9 .*out-of-memory'):
    sbs.peer_rate(sbs.Measured('', 137, 1), PEER, sbs.TORCH_REF_PATTERN)
  with pytest.raises(BenchmarkError, match=r"the peer reported '0' meta-steps/s, not a "
                     'positive number'):
    sbs.peer_rate(sbs.Measured('torch_meta_steps_per_s=0\n', 0, 1), PEER,
                  sbs.TORCH_REF_PATTERN)
  with pytest.raises(BenchmarkError, match=r"reported '' meta-steps/s"):
    sbs.peer_rate(sbs.Measured('rate=\n', 0, 1), PEER, r'rate=([0-9.]*)')
  with pytest.raises(BenchmarkError, match=r"our benchmark reported 'nan'"):
    sbs.ours_rate(sbs.Measured('{"meta_steps_per_s": NaN}\n', 0, 1), OURS)
  with pytest.raises(BenchmarkError, match=r'(?s)our benchmark \(ours-bench\) exited 1 '
                     r'without its JSON line.*error: no such config'):
    sbs.ours_rate(sbs.Measured('error: no such config\n', 1, 1), OURS)
  with pytest.raises(BenchmarkError, match="'/nonexistent/peer-bench' could not start"):
    sbs.run_measured(['/nonexistent/peer-bench'])


def test_bad_flags_fail_before_anything_runs():
  def run(cmd):
    raise AssertionError('nothing may run')
  with pytest.raises(ConfigError, match='at least 2 pairs'):
    sbs.side_by_side(OURS, PEER, 1, run=run)
  with pytest.raises(ConfigError, match='not a regular expression'):
    sbs.side_by_side(OURS, PEER, 2, pattern='(', run=run)
  with pytest.raises(ConfigError, match='has no group'):
    sbs.side_by_side(OURS, PEER, 2, pattern=r'steps/s: \S+', run=run)
  for template in ('bench --img {size}', 'bench --img {image_size.real} {steps[0]}'):
    with pytest.raises(ConfigError, match=r'may use only \{image_size\}'):
      sbs.peer_command(template, 64, 3, 1)
  with pytest.raises(ConfigError, match=r'does not use \{image_size\}'):
    sbs.peer_command('bench --img 64 --steps {steps}', 128, 3, 1)
  with pytest.raises(ConfigError, match='check its quotes'):
    sbs.peer_command('bench --img {image_size} "unclosed', 64, 3, 1)
  assert sbs.peer_command('b --img {image_size} --steps {steps} -w {warmup} "a b" {{x}}',
                          64, 3, 1) == ['b', '--img', '64', '--steps', '3', '-w', '1', 'a b',
                                        '{x}']
  assert sbs.ours_command('configs/tiny.py', 16, ['inner.steps=1'], 2, 0)[1:] == [
      '-m', 'autoaug_jax.benchmark', '--config=configs/tiny.py', '--config.image_size=16',
      '--config.inner.steps=1', '--steps=2', '--warmup=0', '--noflops']


def test_peak_rss_is_the_process_own():
  """Each child's own peak: a 200 MB child reads as such, and a small one does not read as
  big as the process that measures it (Linux carries a parent's peak RSS into a child across
  fork and exec, so a plain wait4 from here would)."""
  ballast = np.ones(300 * 2**20 // 8)  # this process: > 300 MB resident
  big = sbs.run_measured([sys.executable, '-c', 'b = bytearray(200 * 2**20); print("ok")'])
  small = sbs.run_measured([sys.executable, '-c', 'print("ok")'])
  assert big.output == small.output == 'ok\n' and big.returncode == small.returncode == 0
  assert big.peak_rss_mb > 200 > small.peak_rss_mb
  assert sbs.run_measured([sys.executable, '-c', 'raise SystemExit(3)']).returncode == 3
  killed = sbs.run_measured([sys.executable, '-c', 'import os; os.kill(os.getpid(), 9)'])
  assert killed.returncode == 128 + 9
  with pytest.raises(BenchmarkError, match='was killed by signal 9 .*before reporting'):
    sbs.run_measured([sys.executable, '-c', 'import os; os.kill(os.getppid(), 9)'])
  del ballast


@pytest.mark.slow
def test_cli_runs_our_benchmark_against_a_peer_command():
  peer = (f'{shlex.quote(sys.executable)} -c '
          '"import sys; print(sys.argv[1:]); print(\'torch_meta_steps_per_s=0.5\')" '
          '--img {image_size} --steps {steps}')
  out = subprocess.run(
      [sys.executable, 'experiments/side_by_side.py', '--config=configs/tiny.py',
       '--image_size=16', '--override=inner.steps=1', '--pairs=2', '--steps=1', '--warmup=0',
       f'--peer={peer}'], cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['peer_meta_steps_per_s'] == [0.5, 0.5] and result['pairs'] == 2
  assert all(r > 0 for r in result['ours_meta_steps_per_s'])
  np.testing.assert_allclose(result['ratio_per_pair'],
                             np.divide(result['ours_meta_steps_per_s'], 0.5))
  assert min(result['ours_peak_rss_mb']) > 100  # a JAX process, not the launcher
  assert 'ours / peer: ' in out.stdout
  bad = subprocess.run(
      [sys.executable, 'experiments/side_by_side.py', '--config=configs/tiny.py',
       '--image_size=16', '--pairs=2',
       f'--peer={shlex.quote(sys.executable)} -c "print(1)" {{image_size}}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 1 and 'printed nothing matching --peer_pattern' in bad.stderr
