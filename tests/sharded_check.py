"""Run by test_meta_step.py in a subprocess with 4 simulated CPU devices.

Prints one JSON line comparing 2 meta-steps and an evaluation on a 4-device
task mesh against the same on 1 device.
"""

import json
import sys

import jax
import numpy as np

sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from conftest import load_config  # noqa: E402

from autoaug_jax.config import builders  # noqa: E402
from autoaug_jax.core import evaluation, sharding, tasks  # noqa: E402


def run(mesh, config, split):
  setup = builders.meta_setup(config)
  dev = tasks.to_device(split, mesh)
  state = setup.init_state(mesh)
  step = setup.meta_step(mesh, config.meta_batch_size)
  consts = setup.placed_constants(mesh)
  hlo = step.lower(state, dev, consts).compile().as_text()
  for _ in range(2):
    state, metrics = step(state, dev, consts)
  accs = evaluation.evaluate(setup.objective, state.params, dev, mesh,
                             evaluation.eval_stream(0, 'test'), 6, 6, consts=consts,
                             task_chunk=setup.task_chunk).accuracy
  leaf = jax.tree.leaves(state.params)[0]
  return state, metrics, accs, hlo, len(leaf.sharding.device_set)


def main():
  assert len(jax.devices()) == 4, jax.devices()
  config = load_config('tiny')
  config.meta_batch_size = 4
  split = builders.load_split(config, 'train')
  s4, m4, a4, hlo4, n4 = run(sharding.make_mesh(4), config, split)
  s1, m1, a1, _, n1 = run(sharding.make_mesh(1), config, split)
  # Two tasks per device, run one after the other (the CPU layout), vs one vmap.
  config.meta_batch_size = 8
  config.task_chunk = 1
  c4, cm4, _, _, _ = run(sharding.make_mesh(4), config, split)
  config.task_chunk = 0
  # As 'auto' picks for task_chunk 1 above, here under one vmap over tasks.
  config.classifier.conv_impl = 'native_vjp'
  c1, cm1, _, hlo_vmap, _ = run(sharding.make_mesh(1), config, split)
  p4, p1 = jax.device_get(s4.params), jax.device_get(s1.params)
  diff = max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(p4), jax.tree.leaves(p1), strict=True))
  print(json.dumps({
      'param_max_abs_diff': diff,
      'param_max_abs': max(float(np.abs(a).max()) for a in jax.tree.leaves(p1)),
      'meta_loss': [float(m4['meta_loss']), float(m1['meta_loss'])],
      'eval_acc_equal': bool(np.array_equal(a4, a1)),
      'chunked_param_max_abs_diff': max(
          float(np.abs(a - b).max()) for a, b in zip(
              jax.tree.leaves(jax.device_get(c4.params)),
              jax.tree.leaves(jax.device_get(c1.params)), strict=True)),
      'chunked_meta_loss': [float(cm4['meta_loss']), float(cm1['meta_loss'])],
      'eval_len': int(a4.shape[0]),
      'devices_holding_params': [n4, n1],
      'all_reduce_in_4_device_program': 'all-reduce' in hlo4,
      'classifier_conv_impl': builders.classifier_conv_impl(load_config('tiny')),
      'grouped_convolutions': [_grouped_convolutions(hlo4), _grouped_convolutions(hlo_vmap)],
  }))


def _grouped_convolutions(hlo: str) -> int:
  """Convolutions with a group count: what a vmap over per-task weights makes of them."""
  return sum(' convolution(' in line and '_group_count=' in line for line in hlo.splitlines())


if __name__ == '__main__':
  main()
