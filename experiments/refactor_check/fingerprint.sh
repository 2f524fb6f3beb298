#!/bin/bash
# Runs every entry point on tiny configs (every augmenter and classifier family) and
# keeps the numbers, so that two commits can be compared bit for bit:
#
#   experiments/refactor_check/fingerprint.sh OLD_CHECKOUT /tmp/fp/old
#   experiments/refactor_check/fingerprint.sh NEW_CHECKOUT /tmp/fp/new
#   python experiments/refactor_check/compare.py /tmp/fp/old /tmp/fp/new
#
# Both on the same machine, back to back (XLA:CPU's rounding depends on the
# processor). About 12 minutes each on 2 cores. PYTHON: the interpreter (default
# python3), with this project installed.
set -u
REPO=$(cd "$1" && pwd); OUT=$2
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"; rm -rf "${OUT:?}"/*
cd "$REPO"
export PYTHONPATH=$REPO AUTOAUG_JAX_CACHE=$OUT/glyph_cache HF_HUB_OFFLINE=1 \
  DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error
# Tiny random weights through the real loading path (the tests' fixture writers).
PYTHONPATH=$REPO:$HERE/../../tests $PY -c "
import pathlib, sys
from resnet_fixtures import save_tiny_resnet
from diffusion_fixtures import save_tiny_sd
save_tiny_resnet(pathlib.Path('$OUT/resnet'))
save_tiny_sd(pathlib.Path('$OUT/sd'))
" > "$OUT/weights.log" 2>&1
W=$OUT/w
T="--config=configs/tiny.py"
run() { name=$1; shift; echo "== $name"; "$@" > "$OUT/$name.log" 2>&1; echo "rc $?" | tee -a "$OUT/$name.log"; }
run A $PY -m autoaug_jax.main $T --workdir="$W/A" --config.eval.methods="('none','duplicate','fixed','random_convnet','learned','adapted')"
run B $PY -m autoaug_jax.evaluate --workdir="$W/A" --config.task.k_shot=1 --config.eval.num_tasks=4
run C $PY -m autoaug_jax.benchmark $T --steps=1 --warmup=0
run D $PY -m autoaug_jax.main $T --workdir="$W/D" --config.classifier.name=resnet50 --config.classifier.weights="$OUT/resnet" --config.augmenter.name=resnet50 --config.augmenter.weights="$OUT/resnet" --config.num_meta_steps=2 --config.image_size=32 --config.classifier.trainable_blocks=1
run E $PY -m autoaug_jax.main $T --workdir="$W/E" --config.augmenter.name=diffusion --config.augmenter.sd_dir="$OUT/sd" --config.augmenter.prompt_net.name=convnet --config.augmenter.prompt_net.channels=8 --config.augmenter.num_prompt_tokens=2 --config.augmenter.num_inference_steps=2 --config.augmenter.generate_size=16 --config.augmenter.guidance_scale=2.0 --config.augmenter.sd_dtype=float32 --config.num_meta_steps=2
run F $PY -m autoaug_jax.main $T --workdir="$W/F" --config.data.spurious=1.0 --config.num_cpu_devices=2 --config.task_chunk=1 --config.outer.optimizer=sgd --config.augmenter.factor=2
run G $PY -m autoaug_jax.benchmark $T --data_only
