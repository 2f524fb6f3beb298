"""The compiled meta-step: determinism, one compilation, frozen leaves, sharding."""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from autoaug_jax.config import builders
from autoaug_jax.core import sharding, tasks
from autoaug_jax.errors import ConfigError

HERE = os.path.dirname(__file__)


def _steps(config, split, n, mesh=None):
  mesh = mesh or sharding.make_mesh(1)
  run = builders.meta_setup(config)
  dev = tasks.to_device(split, mesh)
  state = run.init_state(mesh)
  step = run.meta_step(mesh, config.meta_batch_size)
  consts = run.placed_constants(mesh)
  history = []
  for _ in range(n):
    state, metrics = step(state, dev, consts)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return state, history, step


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_other_numbers(tiny_config, tiny_splits):
  a, ha, _ = _steps(tiny_config, tiny_splits['train'], 2)
  b, hb, _ = _steps(tiny_config, tiny_splits['train'], 2)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert ha == hb
  tiny_config.seed = 1
  c, hc, _ = _steps(tiny_config, tiny_splits['train'], 2)
  assert hc[0]['meta_loss'] != ha[0]['meta_loss']


def test_no_recompilation_across_outer_steps(tiny_config, tiny_splits):
  state, history, step = _steps(tiny_config, tiny_splits['train'], 3)
  assert step._cache_size() == 1
  assert int(state.step) == 3
  # Each step saw different tasks (fold_in(key, step)).
  assert len({h['meta_loss'] for h in history}) == 3


def test_cpu_compiler_options_reach_xla_and_change_only_rounding(tiny_config, tiny_splits,
                                                                 monkeypatch):
  # The options exist only to save compile memory (sharding._CPU_COMPILER_OPTIONS).
  assert sharding.compiler_options(sharding.make_mesh(1))
  _, with_options, _ = _steps(tiny_config, tiny_splits['train'], 1)
  monkeypatch.setattr(sharding, '_CPU_COMPILER_OPTIONS', {})
  _, without, _ = _steps(tiny_config, tiny_splits['train'], 1)
  for name, value in without[0].items():
    np.testing.assert_allclose(with_options[0][name], value, rtol=1e-4, err_msg=name)
  # Reaching XLA: an option it does not know fails the compile (as would one a
  # jaxlib upgrade removes).
  monkeypatch.setattr(sharding, '_CPU_COMPILER_OPTIONS', {'xla_cpu_no_such_option': True})
  with pytest.raises(Exception, match='xla_cpu_no_such_option'):
    _steps(tiny_config, tiny_splits['train'], 1)


def test_a_users_xla_flags_setting_wins_over_the_cpu_compiler_options(monkeypatch):
  mesh = sharding.make_mesh(1)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert sharding.compiler_options(mesh) == sharding._CPU_COMPILER_OPTIONS
  # The user asks for XLA:CPU's MLIR emitters: the option would override that, so it goes.
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2 '
                     '--xla_cpu_use_fusion_emitters=true')
  assert sharding.compiler_options(mesh) is None


@pytest.mark.slow
def test_learned_params_move_and_frozen_params_do_not(tiny_config, tiny_splits):
  run = builders.meta_setup(tiny_config)
  start = jax.device_get(run.initial_params)
  state, _, _ = _steps(tiny_config, tiny_splits['train'], 2)
  moved = [np.abs(a - b).max() for a, b in
           zip(jax.tree.leaves(state.params), jax.tree.leaves(start), strict=True)]
  assert min(moved) > 0
  tiny_config.augmenter.frozen = True
  state, history, _ = _steps(tiny_config, tiny_splits['train'], 2)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(start), strict=True):
    np.testing.assert_array_equal(a, b)
  assert history[0]['grad_norm'] > 0 and history[0]['update_norm'] == 0


def test_meta_batch_must_split_over_devices():
  # Only .devices (their count and process_index) is read.
  one_host = [types.SimpleNamespace(process_index=0)] * 2
  two_devices = types.SimpleNamespace(devices=np.array(one_host, dtype=object))
  sharding.check_divisible(4, two_devices, 'meta_batch_size')
  with pytest.raises(ConfigError, match=r'meta_batch_size=3 does not split evenly over 2 '
                                        r'devices; .*meta_batch_size=4'):
    sharding.check_divisible(3, two_devices, 'meta_batch_size')
  assert sharding.padded(3, two_devices) == 4
  with pytest.raises(ConfigError, match='num_devices=9 but only'):
    sharding.make_mesh(9)
  two_hosts = [types.SimpleNamespace(process_index=p) for p in (0, 0, 1, 1)]
  with pytest.raises(ConfigError, match=r'over 4 devices \(2 processes x 2\); .*=8'):
    sharding.check_divisible(6, types.SimpleNamespace(devices=np.array(two_hosts)), 'key')


@pytest.mark.slow
def test_four_device_mesh_equals_single_device():
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4')
  out = subprocess.run([sys.executable, os.path.join(HERE, 'sharded_check.py')], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['devices_holding_params'] == [4, 1]
  assert result['all_reduce_in_4_device_program']
  assert result['param_max_abs_diff'] <= 1e-6 * max(1.0, result['param_max_abs'])
  np.testing.assert_allclose(*result['meta_loss'], rtol=1e-6)
  assert result['eval_len'] == 6 and result['eval_acc_equal']
  assert result['chunked_param_max_abs_diff'] <= 1e-6 * max(1.0, result['param_max_abs'])
  np.testing.assert_allclose(*result['chunked_meta_loss'], rtol=1e-6)
  # The CPU default: native convolutions, one task at a time per device. Each
  # device's program (shard_map) has no device axis, so the classifier's
  # per-task weights leave its convolutions ungrouped; one vmap over tasks does
  # not (the check can fail).
  assert result['classifier_conv_impl'] == 'native_vjp'
  grouped_sharded, grouped_vmap = result['grouped_convolutions']
  assert grouped_sharded == 0 < grouped_vmap
