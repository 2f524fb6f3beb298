"""Convolution and pooling written as matmuls, for the classifier trained in the inner loop.

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

import flax.linen as nn
import jax
import jax.numpy as jnp


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
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
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
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
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
