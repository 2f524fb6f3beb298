"""The matmul forms of layers.py against the native layers they replace on CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoaug_jax import layers
from autoaug_jax.augmenters import resnet as resnet_augmenter

# The decoder's (kernel, stride) pairs, then shapes that exercise the tap
# arithmetic elsewhere: even kernels (uneven padding), stride 3, stride above
# the kernel. Stride 1 is the canonical-gradient correlation.
PAIRS = [(3, 2), (5, 2), (7, 1), (4, 2), (5, 3), (6, 3), (2, 2), (1, 2), (4, 1), (1, 1)]


def _weighted_sum(y):
  # Distinct weights per output element, so a misplaced pixel changes the gradient.
  return (y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size).sum()


@pytest.mark.parametrize('kernel_size, stride', PAIRS)
def test_sub_pixel_transposed_conv_is_nn_conv_transpose(kernel_size, stride):
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 3), jnp.float64)
    theirs = nn.ConvTranspose(4, (kernel_size, kernel_size), strides=(stride, stride),
                              padding='SAME')
    ours = layers.ConvTranspose(4, kernel_size, stride)
    params = theirs.init(jax.random.key(1), x)
    # Same names, shapes and draws: checkpoints and seeds carry over.
    mine = ours.init(jax.random.key(1), x)
    assert jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, mine) == (
        jax.tree.map(lambda _: True, params))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    y_theirs, y_ours = theirs.apply(params, x), ours.apply(params, x)
    assert y_ours.shape == (2, 3 * stride, 5 * stride, 4)
    np.testing.assert_allclose(y_ours, y_theirs, rtol=0, atol=1e-12)
    grad = lambda m: jax.grad(lambda p, x: _weighted_sum(m.apply(p, x)), (0, 1))  # noqa: E731
    for a, b in zip(jax.tree.leaves(grad(ours)(params, x)),
                    jax.tree.leaves(grad(theirs)(params, x)), strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)


def test_native_impl_and_bad_impl():
  x = jnp.ones((1, 2, 2, 3))
  kernel = jax.random.normal(jax.random.key(0), (5, 5, 3, 2))
  np.testing.assert_allclose(layers.conv_transpose(x, kernel, 2, 'native'),
                             layers.conv_transpose(x, kernel, 2, 'patches'), atol=1e-5)
  with pytest.raises(ValueError, match="conv impl 'fast'"):
    layers.conv_transpose(x, kernel, 2, 'fast')


def test_resnet_decoder_patches_equals_native():
  """The ResNet augmenter's decoder on CPU ('patches') and on accelerators ('native'):
  one parameter tree, the same values and gradients to float32 rounding."""
  z = jax.random.normal(jax.random.key(0), (2, 2, 2, 24))
  widths = (12, 10, 8, 6, 5, 4, 3)
  patches = resnet_augmenter.Decoder(widths, impl='patches')
  native = resnet_augmenter.Decoder(widths, impl='native')
  params = patches.init(jax.random.key(1), z)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         native.init(jax.random.key(1), z))
  y_patches, y_native = patches.apply(params, z), native.apply(params, z)
  assert y_patches.shape == (2, 64, 64, 3)
  np.testing.assert_allclose(y_patches, y_native, rtol=0, atol=2e-6)
  grad = lambda m: jax.grad(lambda p, z: _weighted_sum(m.apply(p, z)), (0, 1))  # noqa: E731
  for a, b in zip(jax.tree.leaves(grad(patches)(params, z)),
                  jax.tree.leaves(grad(native)(params, z)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_stride_one_gradients_stay_canonical_inside_a_loop():
  """The 7x7 stride-1 layers under lax.map over tasks, as in the meta-step: every
  convolution XLA:CPU compiles is NHWC x HWIO -> NHWC, the layout it runs on its
  fast path (autodiff's own transposes were left as naive loops there, 200x slower)."""
  kernel = jax.random.normal(jax.random.key(0), (7, 7, 4, 3))
  xs = jax.random.normal(jax.random.key(1), (2, 3, 8, 8, 4))

  def loss(kernel, impl):
    def one(x):
      return _weighted_sum(layers.conv_transpose(x, kernel, 1, impl))
    return jax.lax.map(one, xs).sum()

  hlo = {impl: jax.jit(jax.grad(loss), static_argnums=1).lower(kernel, impl).compile().as_text()
         for impl in ('patches', 'native')}
  labels = {impl: [line.split('dim_labels=')[1].split(',')[0]
                   for line in text.splitlines() if ' convolution(' in line]
            for impl, text in hlo.items()}
  assert labels['patches'] and set(labels['patches']) == {'b01f_01io->b01f'}, labels
  # The check can fail: the plain autodiff path compiles to other layouts here.
  assert set(labels['native']) != {'b01f_01io->b01f'}, labels
  np.testing.assert_allclose(jax.grad(loss)(kernel, 'patches'), jax.grad(loss)(kernel, 'native'),
                             rtol=1e-4, atol=1e-4)


def test_stride_one_nested_and_batched_gradients():
  """The custom VJP under what callers may do with it: reverse over reverse, vmap
  over images (shared kernel) and over kernels; forward mode refused by JAX."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 3, 2), jnp.float64)
    f = {impl: lambda x, k, impl=impl: _weighted_sum(layers.conv_transpose(x, k, 1, impl) ** 2)
         for impl in ('patches', 'native')}
    checks = {
        'second order': lambda f: jax.grad(lambda x, k: jax.grad(f, 1)(x, k).sum(), 0)(x, kernel),
        'vmap over images': lambda f: jax.grad(
            lambda k: jax.vmap(lambda xx: f(xx, k))(jnp.stack([x, 2 * x])).sum())(kernel),
        'vmap over kernels': lambda f: jax.grad(
            lambda ks: jax.vmap(lambda k: f(x, k))(ks).sum())(jnp.stack([kernel, -kernel])),
    }
    for name, check in checks.items():
      np.testing.assert_allclose(check(f['patches']), check(f['native']), rtol=1e-10,
                                 atol=1e-10, err_msg=name)
    with pytest.raises(TypeError, match='forward-mode'):
      jax.jvp(f['patches'], (x, kernel), (x, kernel))


@pytest.mark.parametrize('taps_min_pixels', [layers._TAPS_MIN_PIXELS, 0])
def test_classifier_native_vjp_equals_native_to_third_order(taps_min_pixels, monkeypatch):
  """The ConvNet classifier with 'native_vjp' (and 'patches') against plain autodiff of
  lax.conv: an inner SGD step then a query loss, differentiated with respect to the
  images (second order, as the meta-gradient is) and once more (third order), also
  under vmap over per-task weights. Every path of `correlate_canonical` is taken:
  layer 1 (3 channels) pads them to 4 and takes the patch matmul for its data
  gradient; layer 2 (6 channels, padded to 8) convolves throughout; 5 images pad the
  weight gradient's contracted axis to 8; with `_TAPS_MIN_PIXELS` at 0, layer 2's
  weight gradient is per-tap matmuls instead."""
  from autoaug_jax.classifiers.convnet import ConvNet

  monkeypatch.setattr(layers, '_TAPS_MIN_PIXELS', taps_min_pixels)
  with jax.enable_x64(True):
    images = jax.random.normal(jax.random.key(0), (5, 8, 8, 3), jnp.float64)
    labels = jnp.array([0, 1, 0, 1, 1])
    nets = {impl: ConvNet(2, (6, 5), 7, impl) for impl in ('native', 'native_vjp', 'patches')}
    params = nets['native'].init(jax.random.key(1), images)['params']
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

    def meta_loss(impl, params, images):
      net = nets[impl]

      def inner_loss(p, x):
        logits = net.apply({'params': p}, x)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

      stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params,
                             jax.grad(inner_loss)(params, jnp.tanh(images)))
      return inner_loss(stepped, images[::-1])

    checks = {
        'second order': lambda impl, params, x: jax.grad(meta_loss, 2)(impl, params, x),
        'third order': lambda impl, params, x: jax.grad(
            lambda x: (jax.grad(meta_loss, 2)(impl, params, x) ** 2).sum())(x),
        'vmap over weights': lambda impl, params, x: jax.vmap(
            lambda p: jax.grad(meta_loss, 1)(impl, p, x))(
                jax.tree.map(lambda p: jnp.stack([p, -0.5 * p]), params)),
    }
    for name, check in checks.items():
      check = jax.jit(check, static_argnums=0)
      want = check('native', params, images)
      assert float(jnp.abs(jax.tree.leaves(want)[0]).max()) > 0, name
      for impl in ('native_vjp', 'patches'):
        got = check(impl, params, images)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
          np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f'{name}, {impl}')
