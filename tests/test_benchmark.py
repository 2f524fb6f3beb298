"""The benchmark entry point: its JSON line, and the FLOP count's extrapolation."""

import json
import os
import subprocess
import sys

import pytest

from autoaug_jax.run import benchmark, setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {'meta_steps_per_s', 'compile_s', 'peak_memory_mb', 'flops_per_meta_step'}


@pytest.mark.slow
def test_flop_extrapolation_matches_a_full_unroll(tiny_config):
  """XLA counts a scan body once; extrapolating from I=2,3 must match I=5 unrolled."""
  batch = tiny_config.meta_batch_size
  tiny_config.inner.steps = 5
  run = setup.prepare(tiny_config, ('train',), training=True)
  direct = benchmark._flops(run, batch, 5)
  assert benchmark.flop_count(run, batch) == pytest.approx(direct, rel=1e-4)
  tiny_config.inner.steps = 3
  run = setup.prepare(tiny_config, ('train',), training=True)
  assert benchmark.flop_count(run, batch) == benchmark._flops(run, batch, 3) < direct
  # Running tasks one at a time (lax.map) must not hide FLOPs from the count.
  tiny_config.task_chunk = 1
  chunked = setup.prepare(tiny_config, ('train',), training=True)
  assert chunked.setup.task_chunk == 1
  assert benchmark.flop_count(chunked, batch) == benchmark._flops(run, batch, 3)


def test_benchmark_result(tiny_config):
  result = benchmark.benchmark(tiny_config, steps=2, warmup=1, count_flops=False)
  assert set(result) >= KEYS
  assert result['meta_steps_per_s'] > 0 and result['compile_s'] > 0
  assert result['peak_memory_mb'] > 0 and len(result['step_times_s']) == 2


def test_data_benchmark_counts_the_bytes_placed(tiny_config):
  result = benchmark.data_benchmark(tiny_config)
  n = tiny_config.image_size
  expected = {k: v * n * n * 3 / 2**20 for k, v in result['images'].items()}
  assert result['split_mb'] == pytest.approx(expected)
  # glyph masks ride along: one more byte per pixel
  assert result['per_device_mb'] == pytest.approx(sum(expected.values()) * 4 / 3)
  assert result['images'] == {'train': 64 * 8, 'val': 16 * 8, 'test': 20 * 8}


@pytest.mark.slow
def test_cli_last_line_is_json():
  out = subprocess.run([sys.executable, '-m', 'autoaug_jax.benchmark', '--config=configs/tiny.py',
                        '--steps=1', '--warmup=0'], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(result) >= KEYS and result['flops_per_meta_step'] > 0
