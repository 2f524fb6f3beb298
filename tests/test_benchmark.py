"""The benchmark entry point: its JSON line, the FLOP count's extrapolation, what
each result says produced it (machine, resolved layout, peak FLOP/s and MFU), and
the interleaved comparison of two programs (--compare)."""

import json
import os
import subprocess
import sys

import jax
import jaxlib
import numpy as np
import pytest
import scipy.stats

from autoaug_jax import statistics
from autoaug_jax.errors import ConfigError
from autoaug_jax.run import benchmark, compare, peak_flops, setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {'meta_steps_per_s', 'compile_s', 'peak_memory_mb', 'flops_per_meta_step'}
# What produced a figure: every result carries these.
PROVENANCE = {'platform', 'device_kind', 'num_devices', 'process_count', 'jax_version',
              'jaxlib_version'}
LAYOUT = {'conv_impl', 'conv_impl_config', 'task_chunk', 'matmul_precision'}
FLOPS = {'mfu', 'peak_flops_per_device', 'peak_flops_basis', 'peak_flops_source'}


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
  assert set(result) >= KEYS | PROVENANCE | LAYOUT | FLOPS
  assert result['meta_steps_per_s'] > 0 and result['compile_s'] > 0
  assert result['peak_memory_mb'] > 0 and len(result['step_times_s']) == 2
  assert result['platform'] == 'cpu' and result['process_count'] == 1
  assert result['num_devices'] == len(jax.devices())
  assert result['device_kind'] == jax.devices()[0].device_kind
  assert result['jax_version'] == jax.__version__
  assert result['jaxlib_version'] == jaxlib.__version__
  # 'auto' resolved for the CPU (builders.conv_impl, builders.task_chunk); the raw value kept.
  assert result['conv_impl_config'] == 'auto' and result['conv_impl'] == 'native_vjp'
  assert result['task_chunk'] == 1 and result['matmul_precision'] == 'highest'
  assert 'augmenter_conv_impl' not in result  # the ConvNet augmenter has no conv_impl
  # No datasheet peak for a CPU: no MFU, and the reason in its place.
  assert result['mfu'] is None and result['peak_flops_per_device'] is None
  assert result['peak_flops_source'].startswith('cpu:')
  json.loads(json.dumps(result))  # the entry point prints it as one JSON line


def test_peak_lookup_and_mfu_arithmetic():
  kind = 'NVIDIA H100 80GB HBM3'  # jax's device_kind of an H100 SXM5
  peak, basis, source = peak_flops.lookup(kind, 'gpu', 'highest')
  assert (peak, basis) == (67e12, 'fp32') and 'H100' in source  # true float32: CUDA cores
  assert peak_flops.lookup(kind, 'gpu', 'default')[:2] == (494.5e12, 'tf32')  # dense TF32
  assert peak_flops.lookup(kind, 'gpu', 'high', 'bfloat16')[:2] == (989.5e12, 'bf16')
  # 10 TFLOP per step at 0.5 s on 2 devices: 20 TFLOP/s of 134 TFLOP/s.
  result = {'device_kind': kind, 'platform': 'gpu', 'matmul_precision': 'highest',
            'num_devices': 2, 'step_time_median_s': 0.5}
  fields = benchmark.flop_fields(result, 10e12)
  assert fields['achieved_gflops'] == pytest.approx(20e3)
  assert fields['mfu'] == pytest.approx(20e12 / (2 * 67e12))
  assert fields['peak_flops_per_device'] == 67e12 and fields['peak_flops_basis'] == 'fp32'
  assert benchmark.flop_fields(result, float('nan'))['mfu'] is None  # not counted
  # Specific rows before general ones; TPU float32 counts bf16 passes; unknowns say why.
  assert peak_flops.lookup('NVIDIA H100 PCIe', 'gpu', 'highest')[0] == 51e12
  assert peak_flops.lookup('NVIDIA GH200 480GB', 'gpu', 'highest')[0] is None
  assert peak_flops.find('NVIDIA L40S') is None and peak_flops.find('NVIDIA L4').name == 'NVIDIA L4'
  assert peak_flops.lookup('Tesla V100-SXM2-16GB', 'gpu', 'default')[:2] == (15.7e12, 'fp32')
  assert peak_flops.lookup('TPU v5 lite', 'tpu', 'highest')[:2] == (197e12 / 6, 'bf16/6')
  assert peak_flops.lookup('TPU v4', 'tpu', 'default')[:2] == (275e12, 'bf16')
  assert peak_flops.lookup('TPU v6 lite', 'tpu', 'high')[0] == pytest.approx(918e12 / 3)
  peak, _, source = peak_flops.lookup('Some Accelerator 9000', 'gpu', 'highest')
  assert peak is None and 'not in' in source


def test_data_benchmark_counts_the_bytes_placed(tiny_config):
  result = benchmark.data_benchmark(tiny_config)
  n = tiny_config.image_size
  expected = {k: v * n * n * 3 / 2**20 for k, v in result['images'].items()}
  assert result['split_mb'] == pytest.approx(expected)
  # glyph masks ride along: one more byte per pixel
  assert result['per_device_mb'] == pytest.approx(sum(expected.values()) * 4 / 3)
  assert result['images'] == {'train': 64 * 8, 'val': 16 * 8, 'test': 20 * 8}
  assert set(result) >= PROVENANCE and result['platform'] == 'cpu'


@pytest.mark.slow
def test_diffusion_benchmark_runs_random_weights_of_the_models_shapes(tiny_config, tmp_path):
  """The accelerator check's diffusion step, on a tiny pipeline's shapes: XLA's estimate
  of the compiled program, then a real step on random weights with its measured peak."""
  import math

  import jax.numpy as jnp
  from diffusion_fixtures import diffusion_config, save_tiny_sd

  from autoaug_jax.pretrained import stable_diffusion
  config = diffusion_config(tiny_config, save_tiny_sd(tmp_path / 'sd'))
  config.inner.steps = 1
  models = stable_diffusion.load(config.augmenter.sd_dir, jnp.float32)
  result = benchmark.diffusion_benchmark(config, steps=1, warmup=1, num_train_classes=4,
                                         models=models)
  assert set(result) >= PROVENANCE | LAYOUT
  assert result['estimate_total_mb'] > result['frozen_weights_mb'] > 0
  assert result['peak_memory_mb'] > 0 and result['step_time_median_s'] > 0
  assert math.isfinite(result['meta_loss'])


@pytest.mark.slow
def test_cli_last_line_is_json():
  out = subprocess.run([sys.executable, '-m', 'autoaug_jax.benchmark', '--config=configs/tiny.py',
                        '--steps=1', '--warmup=0'], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(result) >= KEYS | PROVENANCE | LAYOUT | FLOPS
  assert result['flops_per_meta_step'] > 0 and result['mfu'] is None


def test_paired_ratio_interval_and_verdict():
  a = np.array([2.0, 4.0, 3.0, 5.0])
  b = a * np.array([0.5, 0.55, 0.45, 0.5])  # B takes about half of A's time, whatever the hour
  ratio = statistics.paired_ratio(a, b)
  logs = np.log(b / a)
  half = scipy.stats.t.ppf(0.975, 3) * logs.std(ddof=1) / 2
  assert ratio.geometric_mean == pytest.approx(np.exp(logs.mean()))
  assert (ratio.lo, ratio.hi) == pytest.approx((np.exp(logs.mean() - half),
                                                np.exp(logs.mean() + half)))
  assert ratio.per_pair == pytest.approx(b / a)
  assert ratio.verdict('B', 'A').startswith('B faster')
  assert statistics.paired_ratio(b, a).verdict('B', 'A').startswith('B slower')
  # Ratios on both sides of 1: no winner named, whatever the geometric mean.
  mixed = statistics.paired_ratio(a, a * np.array([0.8, 1.15, 0.9, 1.2]))
  assert mixed.lo < 1 < mixed.hi and mixed.verdict('B', 'A').startswith('no difference')
  for bad in ((a, b[:3]), (a[:1], b[:1]), (a, -b)):
    with pytest.raises(ValueError, match='paired ratios need'):
      statistics.paired_ratio(*bad)


def test_compare_rejects_bad_overrides_before_building_anything(tiny_config, monkeypatch):
  monkeypatch.setattr(compare.setup_lib, 'prepare', lambda *a, **k: pytest.fail('built'))
  for overrides, match in ((['inner.nonsense=1'], 'not a config key'),
                           (['inner.steps'], 'dotted.key=value'), ([], 'at least one'),
                           (['num_cpu_devices=4'], 'one process')):
    with pytest.raises(ConfigError, match=match):
      compare.compare(tiny_config, overrides, pairs=4)
  with pytest.raises(ConfigError, match='at least 2 pairs'):
    compare.compare(tiny_config, ['inner.steps=1'], pairs=1)
  # Program B is a copy: A's config is left as it was.
  other = compare.overridden(tiny_config, ['--config.inner.steps=1', 'seed=3'])
  assert (other.inner.steps, other.seed) == (1, 3)
  assert (tiny_config.inner.steps, tiny_config.seed) != (1, 3)


@pytest.mark.slow
def test_compare_runs_each_program_on_its_own_config(tiny_config, monkeypatch):
  """Both programs take warmup + pairs steps; B's last meta-loss is what the plain benchmark
  of B's config gives after as many steps, and differs from A's."""
  loads = []
  prepare = setup.prepare
  monkeypatch.setattr(compare.setup_lib, 'prepare', lambda *a, **k: loads.append(1) or
                      prepare(*a, **k))
  result = compare.compare(tiny_config, ['inner.steps=1'], pairs=2, warmup=1)
  assert len(loads) == 1  # B's data is A's: one copy of the dataset
  monkeypatch.undo()
  for side in ('a', 'b'):
    assert len(result[side]['step_times_s']) == 2 and result[side]['compile_s'] > 0
  assert len(result['ratio_b_over_a_per_pair']) == 2
  assert result['ratio_b_over_a_lo'] <= result['ratio_b_over_a'] <= result['ratio_b_over_a_hi']
  alone = benchmark.benchmark(compare.overridden(tiny_config, ['inner.steps=1']), steps=2,
                              warmup=1, count_flops=False)
  assert result['b']['meta_loss'] == alone['meta_loss'] != result['a']['meta_loss']
  assert set(result) >= PROVENANCE and result['b_overrides'] == ['inner.steps=1']
  json.loads(json.dumps(result))


def test_cli_compare_does_not_combine_with_data_only():
  out = subprocess.run([sys.executable, '-m', 'autoaug_jax.benchmark', '--config=configs/tiny.py',
                        '--compare=inner.steps=1', '--data_only'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and 'does not combine with --data_only' in out.stderr
