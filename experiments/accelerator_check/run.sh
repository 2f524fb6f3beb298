#!/usr/bin/env bash
# Accelerator check on a lent GPU or TPU host: installs the carried wheels the
# device's python lacks, then runs check.py (the measurements, the table).
# See README.md beside this file.
#
#   bash experiments/accelerator_check/run.sh [BUDGET_S] [check.py flags...]
#
# Runs from the repository root (it cds there). BUDGET_S (default 540) bounds
# the whole check; everything goes to $OUT (default /tmp/accel_check):
# accel_check.md (the table), results.jsonl, logs/, accel_check.log (all of
# this output). Environment: PY (python, default python3), TORCH_PY (python
# with torch for the reference, default $PY).
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1  # the repository root

BUDGET=${1:-540}
shift || true
PY=${PY:-python3}
OUT=${OUT:-/tmp/accel_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/accel_check.log") 2>&1

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DIFFUSERS_VERBOSITY=error \
  TRANSFORMERS_VERBOSITY=error TF_CPP_MIN_LOG_LEVEL=1
export AUTOAUG_JAX_CACHE=${AUTOAUG_JAX_CACHE:-/tmp/autoaug_jax_cache}
export TORCH_PY=${TORCH_PY:-$PY}

# install DIR TARGET: the wheels in DIR (README.md: how they are made) into TARGET.
install() {
  compgen -G "$1/*.whl" >/dev/null || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$2" "$1"/*.whl
}
# .whl: what `import autoaug_jax` needs, for every step.
if install .whl /tmp/site; then
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# .whl_sd: transformers 4.57 / diffusers 0.39 (the last with Flax classes) for the
# steps that build Flax Hugging Face models only (ResNet-50, Stable Diffusion), so
# that the others see the machine's own transformers and hub.
install .whl_sd /tmp/site_sd && export HF_FLAX_PYTHONPATH=/tmp/site_sd
# .whl_test: pytest and its dependencies, for the gradient tests only.
install .whl_test /tmp/site_test && export TEST_PYTHONPATH=/tmp/site_test

exec "$PY" experiments/accelerator_check/check.py --budget "$BUDGET" --out "$OUT" "$@"
