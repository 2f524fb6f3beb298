#!/usr/bin/env bash
# Accelerator check: our compiled meta-step on a lent GPU, then the torch.func
# reference on the same GPU, then (time permitting) the full-size diffusion
# memory estimate with the GPU compiler. See README.md beside this file.
#
#   bash experiments/accelerator_check/run.sh [BUDGET_S]
#
# Runs from the repository root (it cds there). Each measurement is wrapped in `timeout` and
# skipped when less than its minimum time is left of BUDGET_S (default 315),
# so one hang cannot eat the call. Everything goes to $OUT/accel_check.log
# ($OUT defaults to /tmp/accel_check); the last lines printed are a summary.
# Knobs (environment): PY (python, default python3), IMAGES (sizes for the
# native runs, default "32 64 128"), PATCH_IMAGES (default "32 128"; "" = none),
# STEPS / WARMUP (ours, default 10 / 2), TSTEPS / TWARMUP (torch, 8 / 2),
# INNER_STEPS (default: the config's 20), DIFFUSION=0 to skip the diffusion
# compile, DIFFUSION_ARGS (extra flags for it), DIFFUSION_TIMEOUT (600),
# TORCH_PY (python with torch, default $PY), GPUCHECK (folder holding a copy
# of ../shared/tools/torch_ref/torch_metastep_bench.py, default .gpucheck).
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1  # the repository root

BUDGET=${1:-315}
PY=${PY:-python3}
TORCH_PY=${TORCH_PY:-$PY}
OUT=${OUT:-/tmp/accel_check}
IMAGES=${IMAGES:-"32 64 128"}
PATCH_IMAGES=${PATCH_IMAGES-"32 128"}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
TSTEPS=${TSTEPS:-8}
TWARMUP=${TWARMUP:-2}
INNER_STEPS=${INNER_STEPS:-}
DIFFUSION=${DIFFUSION:-1}
DIFFUSION_ARGS=${DIFFUSION_ARGS:-}
DIFFUSION_TIMEOUT=${DIFFUSION_TIMEOUT:-600}
GPUCHECK=${GPUCHECK:-.gpucheck}
mkdir -p "$OUT"
LOG=$OUT/accel_check.log
exec > >(tee -a "$LOG") 2>&1

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DIFFUSERS_VERBOSITY=error \
  TRANSFORMERS_VERBOSITY=error TF_CPP_MIN_LOG_LEVEL=1
export AUTOAUG_JAX_CACHE=${AUTOAUG_JAX_CACHE:-/tmp/autoaug_jax_cache}

echo "### accelerator check, $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s, PY=$PY"

# Wheels of packages the device's python lacks (README.md: how they are made).
if compgen -G '.whl/*.whl' >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "### wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
SD_PYTHONPATH=${PYTHONPATH:-}
if [ "$DIFFUSION" = 1 ] && compgen -G '.whl_sd/*.whl' >/dev/null; then
  # transformers 4.57 / diffusers 0.39 (the last with Flax) for the diffusion
  # compile only, in their own folder so the other runs see the machine's own.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site_sd .whl_sd/*.whl && SD_PYTHONPATH=/tmp/site_sd:${PYTHONPATH:-} \
    || echo "### .whl_sd install failed: the diffusion compile will likely fail"
fi

# step NAME MIN_S TIMEOUT_S CMD...: runs CMD under `timeout`, clipped to the
# time left; skipped if less than MIN_S is left.
step() {
  local name=$1 min=$2 t=$3; shift 3
  local left=$((BUDGET - SECONDS))
  if (( left < min )); then
    echo "### SKIP $name: ${left}s left < ${min}s"
    return 0
  fi
  (( t > left - 3 )) && t=$((left - 3))
  echo "### BEGIN $name at ${SECONDS}s (timeout ${t}s): $*"
  local s=$SECONDS rc
  timeout -k 5 "$t" "$@"
  rc=$?
  echo "### END $name rc=$rc wall=$((SECONDS - s))s"
  return 0
}

step env 5 30 bash -c '
  uname -a; nproc; free -g | head -2
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,persistence_mode --format=csv
  '"$PY"' -c "
import sys, platform
print(\"python\", sys.version.split()[0], platform.machine())
import importlib.metadata as md
for p in [\"jax\", \"jaxlib\", \"jax-cuda13-plugin\", \"jax-cuda13-pjrt\", \"flax\", \"optax\", \"orbax-checkpoint\", \"chex\", \"numpy\", \"scipy\", \"matplotlib\", \"absl-py\", \"ml-collections\", \"dm-pix\", \"tensorflow-datasets\", \"tensorflow-metadata\", \"torch\", \"transformers\", \"huggingface-hub\", \"tokenizers\"]:
  try: print(p, md.version(p))
  except Exception as e: print(p, \"missing\")
import jax
print(\"jax.devices():\", jax.devices())
print(\"default_matmul_precision:\", jax.config.jax_default_matmul_precision)
"'

# Render the glyph datasets of the later sizes (64, 128 px) in the background
# while the first size runs (one process each; the benchmark reads them from AUTOAUG_JAX_CACHE).
RENDER_PIDS=()
FIRST_IMAGE=${IMAGES%% *}
for s in $IMAGES; do
  [ "$s" = "$FIRST_IMAGE" ] && continue
  XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cpu timeout 150 "$PY" -c "from autoaug_jax.data import glyphs; import time; t=time.time(); glyphs.cached($s, 60); print('rendered glyphs at $s px in %.1f s' % (time.time()-t))" &
  RENDER_PIDS+=($!)
done

inner=()
[ -n "$INNER_STEPS" ] && inner=(--config.inner.steps="$INNER_STEPS")
ours() {  # IMPL SIZE FLOPS MIN TIMEOUT
  step "ours conv_impl=$1 image_size=$2" "$4" "$5" \
    "$PY" -m autoaug_jax.benchmark --config=configs/default.py \
    --config.num_cpu_devices=0 --config.task_chunk=0 --config.image_size="$2" \
    --config.classifier.conv_impl="$1" "${inner[@]}" \
    --steps="$STEPS" --warmup="$WARMUP" --flops="$3"
}

# 1. Ours, native convolutions, at every size (no FLOP count: step 4).
for s in $IMAGES; do
  if [ "$s" != "$FIRST_IMAGE" ] && [ ${#RENDER_PIDS[@]} -gt 0 ]; then
    wait "${RENDER_PIDS[@]}"; RENDER_PIDS=()
  fi
  if [ "$s" = "$FIRST_IMAGE" ]; then ours native "$s" False 30 120
  else ours native "$s" False 30 90; fi
done

# 2. The torch.func reference, same GPU, same shapes, right after. The
# reference is run unedited, through this wrapper (written to a temp file).
REF=$GPUCHECK/torch_metastep_bench.py
[ -f "$REF" ] || REF=../shared/tools/torch_ref/torch_metastep_bench.py
WRAP=$(mktemp /tmp/torch_ref_gpu.XXXXXX.py)
cat > "$WRAP" <<'PYEOF'
"""Runs ../shared/tools/torch_ref/torch_metastep_bench.py (a copy, unedited) on the GPU.

usage: python WRAPPER.py REF.py [sync] -- IMG [IMG ...] -- REF_ARGS...

The reference file is loaded as a module and NOT edited; this wrapper only
- sets torch's default device to cuda (models, parameters, Adam state on the GPU);
- replaces its `make_tasks` by one that builds the tasks with the same CPU
  generator (the reference passes a CPU torch.Generator to torch.rand, which a
  cuda default device rejects) and moves them to the GPU;
- with `sync`, wraps `one_meta_step` with torch.cuda.synchronize() at its end,
  to check that the reference's own per-step timing includes the GPU work;
- prints torch.cuda.max_memory_allocated() per run (the reference reports host RSS).
Each image size is one call of the reference's main() in this one process.
"""
import importlib.util
import sys

import torch

ref_path = sys.argv[1]
rest = sys.argv[2:]
sync = bool(rest) and rest[0] == 'sync'
if sync:
  rest = rest[1:]
assert rest[0] == '--', rest
i = rest.index('--', 1)
sizes, ref_args = rest[1:i], rest[i + 1:]

dev = 'cuda' if torch.cuda.is_available() else 'cpu'
spec = importlib.util.spec_from_file_location('torch_metastep_bench', ref_path)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

_make_tasks = ref.make_tasks


def make_tasks_on_device(*args, **kwargs):
  with torch.device('cpu'):
    tasks = _make_tasks(*args, **kwargs)
  return [tuple(t.to(dev) for t in task) for task in tasks]


ref.make_tasks = make_tasks_on_device
if sync:
  _one = ref.one_meta_step

  def one_meta_step_synced(*args, **kwargs):
    out = _one(*args, **kwargs)
    if dev == 'cuda':
      torch.cuda.synchronize()
    return out

  ref.one_meta_step = one_meta_step_synced

torch.set_default_device(dev)
print(f'wrapper: device={dev} torch={torch.__version__} '
      f'gpu={torch.cuda.get_device_name() if dev == "cuda" else "-"} sync={sync} '
      f'cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} '
      f'matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}', flush=True)
for img in sizes:
  if dev == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  sys.argv = [ref_path, '--img', img] + ref_args
  ref.main()
  if dev == 'cuda':
    print(f'wrapper: img={img} sync={sync} torch_cuda_max_memory_allocated_mb='
          f'{torch.cuda.max_memory_allocated() / 2**20:.1f}', flush=True)
PYEOF
targs=(--mode func --aug-hid 8 --inner-lr 0.1 --outer-lr 1e-3 --noise-std 0.1
       --n-way 3 --k-shot 5 --q-query 5 --meta-batch 4 --factor 1
       --inner-steps "${INNER_STEPS:-20}")
step "torch.func reference, img $IMAGES" 20 100 \
  "$TORCH_PY" "$WRAP" "$REF" -- $IMAGES -- "${targs[@]}" \
  --warmup "$TWARMUP" --steps "$TSTEPS"
# Same, with torch.cuda.synchronize() after each step: does the reference's
# own timing include the GPU work? (One size, few steps.)
mid=$(echo $IMAGES | awk '{print $(int((NF+1)/2))}')
step "torch.func reference, synchronised, img $mid" 15 45 \
  "$TORCH_PY" "$WRAP" "$REF" sync -- "$mid" -- "${targs[@]}" \
  --warmup 1 --steps 4

# 3. Ours, patches (the CPU layout), for comparison.
for s in $PATCH_IMAGES; do ours patches "$s" False 30 90; done

# 4. XLA's FLOP count (two extra compiles, I = 2 and 3 unrolled) at the
# largest size, with the step timed again.
LAST_IMAGE=${IMAGES##* }
ours native "$LAST_IMAGE" True 60 150

# 5. Full-size diffusion meta-step: compile only, XLA's memory analysis.
if [ "$DIFFUSION" = 1 ]; then
  step "diffusion --abstract" 60 "$DIFFUSION_TIMEOUT" env PYTHONPATH="$SD_PYTHONPATH" \
    "$PY" -m autoaug_jax.benchmark --config=configs/diffusion.py --abstract $DIFFUSION_ARGS
fi

step "nvidia-smi at end" 3 10 nvidia-smi --query-gpu=name,memory.used,clocks.sm,power.draw,temperature.gpu --format=csv

# Summary of every JSON result in the log.
"$PY" - "$LOG" <<'EOF'
import json, re, sys
rows = []
name = None
for line in open(sys.argv[1], errors='replace'):
  m = re.match(r'### BEGIN (.*) at \d+s', line)
  if m:
    name = m.group(1)
  m = re.match(r'### END .* rc=(\d+)', line)
  if m and m.group(1) != '0':
    rows.append(f'{name}: rc={m.group(1)}')
  if line.startswith('{') and '"meta_steps_per_s"' in line:
    r = json.loads(line)
    rows.append(f"ours {r['conv_impl']:7s} {r['image_size']:4d}px  {r['meta_steps_per_s']:9.3f} steps/s  "
                f"median {r['step_time_median_s']*1e3:8.1f} ms  compile {r['compile_s']:6.1f} s  "
                f"peak {r['peak_memory_mb']:8.1f} MB ({r['peak_memory_kind']})  temp {r['xla_temp_mb']:8.1f} MB  "
                f"GFLOP {r['flops_per_meta_step']/1e9:8.1f}  GFLOP/s {r['achieved_gflops']:8.1f}  {r['devices']}")
  elif line.startswith('{') and '"estimate_total_mb"' in line:
    r = json.loads(line)
    rows.append(f"diffusion --abstract: total {r['estimate_total_mb']/1024:.2f} GiB, temp {r['temp_mb']/1024:.2f} GiB, "
                f"args {r['argument_mb']/1024:.2f} GiB, compile {r['compile_s']:.1f} s, {r['compiled_for']}")
  elif line.startswith('result {'):
    r = json.loads(line[len('result '):])
    rows.append(f"torch.func   {r['img']:4d}px  {r['steps_per_s']:9.3f} steps/s  median {r['median_s']*1e3:8.1f} ms  "
                f"min {r['min_s']*1e3:8.1f} ms  max {r['max_s']*1e3:8.1f} ms  n={r['n_steps']}")
  elif line.startswith('wrapper: img='):
    rows.append('  ' + line.strip())
print('### SUMMARY')
print('\n'.join(rows))
EOF
rm -f "$WRAP"
echo "### done at ${SECONDS}s"
