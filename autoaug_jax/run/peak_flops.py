"""Vendor peak FLOP/s per device, for the benchmark's FLOP utilisation (`mfu`).

The benchmark divides the FLOP/s it achieved (XLA's count of the compiled
meta-step over the median step time) by the peak of the devices it ran on.
Which peak depends on the arithmetic the float32 program actually gets,
which `matmul_precision` decides (jax.lax.Precision's documentation):

- GPUs: 'highest' is true float32 on the CUDA cores, so the non-tensor FP32
  peak; 'high' and 'default' let XLA use TF32 tensor cores where the GPU has
  them (Ampere and later), so the dense TF32 peak, else FP32 (V100).
- TPUs have no float32 matrix unit: 'default' is one bfloat16 pass, 'high'
  three, 'highest' six, so the peak counted is the dense bf16 peak divided by
  1, 3 or 6 (the float32 FLOPs the MXU can deliver at that precision).
- bfloat16 programs (the diffusion augmenter's frozen weights) get the dense
  bf16 peak on either.
- CPUs: no datasheet figure (it depends on the core count, vector width and
  clocks of the host) and none is measured, so no peak and no MFU.

Figures are dense (NVIDIA's datasheets quote tensor-core rates with 2:4
sparsity; they are halved here), per JAX device: one GPU, or one TPU chip for
v4 and later (one TensorCore per device on v2/v3, not listed). The sources are
tabulated in BUILD_NOTES.md. A device kind not matched here gets no peak, and
`peak_flops_source` says so; add a row rather than guess.
"""

from __future__ import annotations

import dataclasses
import math
import re

T = 1e12


@dataclasses.dataclass(frozen=True)
class Peak:
  """One part's dense peaks in FLOP/s (None: the part has no such unit, or the figure
  is not confirmed)."""
  name: str       # the datasheet's name for the part
  pattern: str    # regular expression searched in jax's `device_kind`
  fp32: float | None
  tf32: float | None
  bf16: float | None
  source: str


_H100 = 'NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100)'
_H200 = 'NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200)'
_A100 = ('NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/content/dam/en-zz/Solutions/'
         'Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)')
_V100 = 'NVIDIA V100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/v100)'
_L4 = 'NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/l4)'
_TPU = 'Google Cloud TPU docs, "System architecture" (cloud.google.com/tpu/docs/{})'
_UNCONFIRMED = 'figures not confirmed from a vendor source; not used'

# First match wins: the more specific patterns come first (an 'H100 PCIe' is also
# an 'H100'; a 'GH200' contains 'H200'; an 'L40S' is not an 'L4').
PEAKS: tuple[Peak, ...] = (
    Peak('NVIDIA H100 PCIe', r'H100 PCIe', 51 * T, 378 * T, 756.5 * T, _H100),
    Peak('NVIDIA H100 NVL', r'H100 NVL', None, None, None, _UNCONFIRMED),
    Peak('NVIDIA H100 SXM5', r'H100', 67 * T, 494.5 * T, 989.5 * T, _H100),
    Peak('NVIDIA GH200', r'GH200', None, None, None, _UNCONFIRMED),
    Peak('NVIDIA H200 NVL', r'H200 NVL', None, None, None, _UNCONFIRMED),
    Peak('NVIDIA H200 SXM', r'H200', 67 * T, 494.5 * T, 989.5 * T, _H200),
    Peak('NVIDIA A100 (SXM4 and PCIe)', r'A100', 19.5 * T, 156 * T, 312 * T, _A100),
    Peak('NVIDIA V100S', r'V100S', None, None, None, _UNCONFIRMED),
    Peak('NVIDIA V100 PCIe', r'V100-PCIE|V100 PCIe', 14 * T, None, None, _V100),
    Peak('NVIDIA V100 SXM2', r'V100', 15.7 * T, None, None, _V100),
    Peak('NVIDIA L4', r'\bL4\b', 30.3 * T, 60 * T, 121 * T, _L4),
    Peak('TPU v4', r'^TPU v4$', None, None, 275 * T, _TPU.format('v4')),
    Peak('TPU v5e', r'^TPU v5 ?(lite|e)\b', None, None, 197 * T, _TPU.format('v5e')),
    Peak('TPU v5p', r'^TPU v5p?$', None, None, 459 * T, _TPU.format('v5p')),
    Peak('TPU v6e (Trillium)', r'^TPU v6 ?(lite|e)\b', None, None, 918 * T,
         _TPU.format('v6e')),
)

# bfloat16 passes per float32 matmul on TPU, by jax_default_matmul_precision.
TPU_PASSES = {'default': 1, 'high': 3, 'highest': 6}


def find(device_kind: str) -> Peak | None:
  """The table's row for a `jax.Device.device_kind`, or None."""
  for peak in PEAKS:
    if re.search(peak.pattern, device_kind):
      return peak
  return None


def lookup(device_kind: str, platform: str, matmul_precision: str,
           dtype: str = 'float32') -> tuple[float | None, str, str]:
  """Peak FLOP/s of one device for a program of `dtype` at `matmul_precision`.

  Returns (peak or None, basis, source): basis names the figure used (e.g.
  'fp32', 'tf32', 'bf16/6'), source the datasheet, or why there is no peak.
  """
  if platform == 'cpu':
    return None, '', ('cpu: no datasheet peak (it depends on the host\'s cores, vector '
                      'width and clocks) and none measured; mfu not computed')
  peak = find(device_kind)
  if peak is None:
    return None, '', f'{device_kind!r} is not in autoaug_jax/run/peak_flops.PEAKS'
  if dtype == 'bfloat16':
    basis, value = 'bf16', peak.bf16
  elif platform == 'tpu':
    passes = TPU_PASSES.get(matmul_precision)
    basis = f'bf16/{passes}' if passes and passes > 1 else 'bf16'
    value = peak.bf16 / passes if peak.bf16 and passes else None
  elif matmul_precision == 'highest' or peak.tf32 is None:
    basis, value = 'fp32', peak.fp32
  else:
    basis, value = 'tf32', peak.tf32
  if value is None:
    return None, basis, f'{peak.name}: no {basis} figure ({peak.source})'
  return value, basis, f'{peak.name}, dense {basis}: {peak.source}'


def mfu(flops_per_s: float, peak_per_device: float | None, num_devices: int) -> float | None:
  """Achieved over peak FLOP/s of all `num_devices`; None without a peak or a count."""
  if peak_per_device is None or not math.isfinite(flops_per_s):  # no peak, or no count
    return None
  return flops_per_s / (peak_per_device * num_devices)
