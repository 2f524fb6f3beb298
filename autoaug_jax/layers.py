"""Convolution and pooling written as matmuls, for the classifier trained in the inner loop
and the ResNet augmenter's trunk and decoder.

Why not `nn.Conv`: each task trains its own classifier, so under `vmap` over
tasks the weights carry a task axis and XLA lowers a native convolution to a
grouped convolution, which XLA:CPU runs far slower (see BUILD_NOTES.md). A 3x3
'SAME' convolution written as nine shifted slices concatenated on the channel
axis followed by one matmul becomes a batched matmul under `vmap`, and its
second derivatives (needed for the exact meta-gradient) are again matmuls,
slices and pads. The native form stays available for accelerators
(`classifier.conv_impl='native'`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def patches_3x3(x: jax.Array) -> jax.Array:
  """3x3 neighbourhoods with zero padding.

  Args:
    x: [n, H, W, C].

  Returns:
    [n, H, W, 9 * C], neighbourhood-major (dy, dx), channel-minor: matches a
    kernel [3, 3, C, O] reshaped to [9 * C, O].
  """
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate(
      [xp[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
           impl: str = 'patches') -> jax.Array:
  """k x k convolution, no bias, symmetric zero padding (the ResNet trunk's convs).

  Args:
    x: [n, H, W, C].
    kernel: [k, k, C, O].
    stride: spatial stride.
    padding: zero rows/columns added on each side.
    impl: 'patches' (strided slices concatenated, then one matmul) or 'native'.

  Returns:
    [n, (H + 2p - k) // stride + 1, (W + 2p - k) // stride + 1, O].
  """
  k, _, c, o = kernel.shape
  if impl == 'native':
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=_NHWC)
  if impl != 'patches':
    raise ValueError(f"conv impl {impl!r}: choose 'patches' or 'native'.")
  if k == 1 and padding == 0:
    return x[:, ::stride, ::stride, :] @ kernel.reshape(c, o)
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  patches = jnp.concatenate(
      [xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]
       for dy in range(k) for dx in range(k)], axis=-1)
  return patches @ kernel.reshape(k * k * c, o)


def _same_transpose_pads(k: int, s: int) -> tuple[int, int]:
  """(front, back) padding of the s-dilated input in a 'SAME' `lax.conv_transpose`."""
  pad_len = k + s - 2
  pad_a = k - 1 if s > k - 1 else -(-pad_len // 2)  # jax's _conv_transpose_padding
  return pad_a, pad_len - pad_a


def _correlate(x: jax.Array, kernel: jax.Array, pads: tuple[int, int]) -> jax.Array:
  """Stride-1 correlation, x [n, H, W, C] with kernel [k, k, C, O], `pads` on both axes."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), [pads, pads], dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def correlate_canonical(x: jax.Array, kernel: jax.Array, pads: tuple[int, int]) -> jax.Array:
  """`_correlate` whose two gradients are again NHWC x HWIO convolutions.

  Autodiff of a convolution gives transposed dimension numbers (the kernel as
  OI, the weight gradient contracting batch and space). XLA:CPU rewrites those
  into its fast layout in the entry computation, but inside the meta-step's
  `lax.map` over tasks (a while loop) it left them as they were and emitted a
  naive loop: 55 s for one 7x7 weight gradient at 128 px, against 0.26 s for
  the same contraction written here (BUILD_NOTES.md).

  Reverse mode, also nested and under vmap; no forward mode (a custom VJP:
  JAX's `linear_call`, which would allow both, has no batching rule). The
  decoder that uses it is differentiated once, in reverse.

  Args:
    x: [n, H, W, C].
    kernel: [k, k, C, O].
    pads: (front, back) zero padding, the same on both spatial axes.

  Returns:
    [n, H + front + back - k + 1, ..., O].
  """
  return _correlate(x, kernel, pads)


def _correlate_fwd(x, kernel, pads):
  return _correlate(x, kernel, pads), (x, kernel)


def _correlate_bwd(pads, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  lo, hi = pads
  # dx: g against the flipped kernel with in/out swapped, padded to give back H rows.
  dx = _correlate(g, kernel[::-1, ::-1].transpose(0, 1, 3, 2), (k - 1 - lo, k - 1 - hi))
  # dkernel[a, b, c, o] = sum_{n,h,w} xpad[n, h + a, w + b, c] g[n, h, w, o]: channels as
  # the batch, images as the contracted features, g as a [H', W', n, O] kernel.
  dkernel = _correlate(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pads)
  return dx, dkernel.transpose(1, 2, 0, 3)


correlate_canonical.defvjp(_correlate_fwd, _correlate_bwd)


def _same_transpose_taps(k: int, s: int) -> tuple[list[list[tuple[int, int]]], int, int]:
  """Which kernel taps feed which output phase of a 'SAME' transposed convolution.

  `lax.conv_transpose(..., 'SAME')` (what `nn.ConvTranspose` runs) correlates the
  kernel with the input dilated by s and padded by pad_a in front. Output
  o = s q + r then sums taps j = s (i - q) + pad_a - r, i.e. input row q + d with
  d = (j - pad_a + r) / s: each phase r is an ordinary stride-1 correlation of the
  undilated input with the taps j = pad_a - r (mod s).

  Returns:
    taps[r]: (j, d) pairs of phase r; d_min, d_max over every phase.
  """
  pad_a, _ = _same_transpose_pads(k, s)
  taps = [[(j, (j - pad_a + r) // s) for j in range(k) if (j - pad_a + r) % s == 0]
          for r in range(s)]
  ds = [d for phase in taps for _, d in phase]
  return taps, min(ds), max(ds)


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int,
                   impl: str = 'patches') -> jax.Array:
  """'SAME' transposed convolution, no bias: the values of `nn.ConvTranspose`.

  'patches' is, for s > 1, the sub-pixel form: the s^2 output phases are
  stride-1 correlations of the undilated input with sub-kernels, computed
  together as one [.., m C] x [m C, s^2 O] matmul per kernel row (m = the taps'
  window, 3 for k = 5, s = 2) and interleaved by a depth-to-space reshape.
  XLA:CPU runs the native form (a convolution of the s-dilated input, 3/4 of it
  zeros for s = 2) on a slow path: the sub-pixel form, with no dilation and no
  overlap-add, is 8-17x faster for the ResNet decoder's stride-2 layers
  (BUILD_NOTES.md). Rows are accumulated rather than concatenated so the patch
  matrix is m, not m^2, times the input. For s = 1 the transposed convolution
  is an ordinary convolution, which XLA:CPU runs well when its weights are
  shared (here, unlike the classifier's per-task weights under vmap): 5-7x
  faster than patches for the decoder's 7x7 layers at 128 px, and without a
  7x patch matrix. 'patches' runs it as `correlate_canonical`, whose
  gradients keep XLA:CPU's fast layout inside loops over tasks.

  Args:
    x: [n, H, W, C].
    kernel: [k, k, C, O], as `nn.ConvTranspose` stores it (transpose_kernel=False).
    stride: s, the same in both spatial dimensions.
    impl: 'patches' (sub-pixel matmuls) or 'native' (`lax.conv_transpose`).

  Returns:
    [n, s H, s W, O].
  """
  if impl not in ('patches', 'native'):
    raise ValueError(f"conv impl {impl!r}: choose 'patches' or 'native'.")
  # One dtype, as nn.ConvTranspose promotes them (float64 inputs in gradient checks).
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if impl == 'native':
    return jax.lax.conv_transpose(x, kernel, (stride, stride), 'SAME',
                                  dimension_numbers=_NHWC)
  if stride == 1:  # lax.conv_transpose at stride 1: a correlation with the kernel as stored
    return correlate_canonical(x, kernel, _same_transpose_pads(kernel.shape[0], 1))
  k, _, c, o = kernel.shape
  s = stride
  n, h, w, _ = x.shape
  taps, lo, hi = _same_transpose_taps(k, s)
  m = hi - lo + 1
  # Sub-kernels on the shared window: w_all[dy, dx, :, ry, rx, :] is the tap that
  # phase (ry, rx) applies at input offset (lo + dy, lo + dx); zero where it has none.
  index = [[-1] * s for _ in range(m)]  # index[d - lo][r] -> kernel tap j, or -1
  for r, phase in enumerate(taps):
    for j, d in phase:
      index[d - lo][r] = j
  flat = jnp.asarray([[j if j >= 0 else k for j in row] for row in index])  # [m, s]
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap k is the zero tap
  w_all = padded[flat[:, None, :, None], flat[None, :, None, :]]  # [m, m, s, s, C, O]
  w_all = w_all.transpose(0, 1, 4, 2, 3, 5).reshape(m, m * c, s * s * o)
  xp = jnp.pad(x, ((0, 0), (-lo, hi), (-lo, hi), (0, 0)))
  y = 0.0
  for dy in range(m):
    rows = xp[:, dy:dy + h]
    patches = jnp.concatenate([rows[:, :, dx:dx + w] for dx in range(m)], axis=-1)
    y = y + patches @ w_all[dy]
  y = y.reshape(n, h, w, s, s, o).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, s * h, s * w, o)


class ConvTranspose(nn.Module):
  """'SAME' transposed convolution, stride s: parameters named, shaped and initialised
  as `nn.ConvTranspose`'s ('kernel' [k, k, C, O] then 'bias' [O]), so both share
  checkpoints and the same key gives the same weights."""
  features: int
  kernel_size: int
  stride: int
  impl: str = 'patches'  # 'patches' (sub-pixel matmuls) or 'native' (lax.conv_transpose)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    # float32 draws as nn.ConvTranspose's param_dtype, also under x64: same key, same values.
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    return conv_transpose(x, kernel, self.stride, self.impl) + bias


class Conv3x3(nn.Module):
  """3x3 convolution, stride 1, zero padding 1 (the paper's classifier convs).

  Parameters are named and shaped like `nn.Conv` ('kernel' [3, 3, C, O],
  'bias' [O]), so both implementations share checkpoints.
  """
  features: int
  impl: str = 'patches'  # 'patches' (matmul) or 'native' (lax.conv)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if self.impl == 'native':
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=_NHWC)
    elif self.impl == 'patches':
      y = patches_3x3(x) @ kernel.reshape(9 * c, self.features)
    else:
      raise ValueError(f"conv impl {self.impl!r}: choose 'patches' or 'native'.")
    return y + bias


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, no padding; odd trailing rows/columns are dropped.

  Args:
    x: [n, H, W, C].

  Returns:
    [n, H // 2, W // 2, C].
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
