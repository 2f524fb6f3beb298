r"""Our meta-step benchmark against a peer implementation's, as alternating processes.

  python experiments/side_by_side.py --image_size=64 --pairs=6 --steps=3 \
      --peer="$TV/bin/python ../shared/tools/torch_ref/torch_metastep_bench.py --mode func \
              --img {image_size} --aug-hid 8 --threads 2 --warmup {warmup} --steps {steps}"

(`TV=$(bash ../shared/tools/torch_ref/setup.sh)`: the torch.func reference's
venv, BUILD_NOTES.md "Side by side with torch.func".) Each pair runs our
benchmark (`--config`, at `--image_size`, with `--override`s) and the peer's
command back to back, alternating which goes first, and the peer's
meta-steps/s is read with `--peer_pattern`. It prints each run, then one JSON
line: the per-pair ratios ours / peer with their geometric mean and 95%
interval, and both sides' peak RSS. Flags only; `autoaug_jax.run.side_by_side`
does the work.
"""

import json

from absl import app, flags

from autoaug_jax.run import cluster, side_by_side

_CONFIG = flags.DEFINE_string('config', 'configs/default.py', 'Our config file.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, 'Image size for both sides.')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'Dotted override of our config, e.g. '
                                      '--override=inner.steps=10 (repeatable).')
_PEER = flags.DEFINE_string('peer', None, 'The peer benchmark\'s command line; {image_size} '
                            '(required), {steps} and {warmup} are filled in.')
_PEER_PATTERN = flags.DEFINE_string(
    'peer_pattern', side_by_side.TORCH_REF_PATTERN,
    'Regular expression whose group 1 is the peer\'s meta-steps/s (its last match counts).')
_PAIRS = flags.DEFINE_integer('pairs', 6, 'Pairs of runs (one of each side per pair); an even '
                              'number balances who goes first.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed meta-steps per run, both sides.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed meta-steps per run, both sides.')
flags.mark_flags_as_required(['image_size', 'peer'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')

  def measure():
    ours = side_by_side.ours_command(_CONFIG.value, _IMAGE_SIZE.value, _OVERRIDE.value,
                                     _STEPS.value, _WARMUP.value)
    peer = side_by_side.peer_command(_PEER.value, _IMAGE_SIZE.value, _STEPS.value,
                                     _WARMUP.value)
    return side_by_side.side_by_side(ours, peer, _PAIRS.value, _PEER_PATTERN.value)

  result = cluster.exit_on_error(measure)
  print(f"ours / peer: {result['ratio']:.3f} [{result['ratio_lo']:.3f}, "
        f"{result['ratio_hi']:.3f}] over {result['pairs']} pairs")
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
