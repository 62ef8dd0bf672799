"""SubpixelConvTranspose computes exactly what nn.ConvTranspose computes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrseg.models import conv_ops
from mrseg.models import convs
from mrseg.models import dcgan
from mrseg.models import mrigan
from mrseg.models import upsample

# (kernel, stride, padding): the DCGAN's up-convolution, the UNet's (2D and
# 3D, SAME and VALID), a kernel that is not a multiple of the stride, stride 1,
# stride 3, and explicit (transposed-convolution) padding, also negative.
CASES = [
    (4, 2, 'SAME'),
    (4, 2, 'VALID'),
    (2, 2, 'SAME'),
    (2, 2, 'VALID'),
    (3, 2, 'SAME'),
    (3, 1, 'SAME'),
    (1, 2, 'VALID'),
    (6, 3, 'SAME'),
    (5, 3, 'VALID'),
    (4, 2, ((2, 1),)),
    (4, 2, ((0, -1),)),
]


def _random_like(tree, seed):
  """Random values for every leaf, so zero biases hide no mistake."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(rng.normal(size=x.shape), x.dtype) for x in leaves])


def _compare(nd, size, kernel, stride, padding, transpose_kernel=False,
             batch_shape=(2,), features=4, in_features=3):
  if isinstance(padding, tuple):
    padding = padding * nd
  kwargs = dict(features=features, kernel_size=(kernel,) * nd,
                strides=(stride,) * nd, padding=padding,
                transpose_kernel=transpose_kernel)
  ref = nn.ConvTranspose(**kwargs)
  sub = upsample.SubpixelConvTranspose(**kwargs)
  rng = np.random.default_rng(size * 10 + kernel)
  x = jnp.asarray(rng.normal(size=batch_shape + (size,) * nd + (in_features,)),
                  jnp.float32)
  ref_vars = ref.init(jax.random.key(0), x)
  sub_vars = sub.init(jax.random.key(0), x)
  # Same parameter names and shapes, and the same initial values.
  assert (jax.tree_util.tree_map(jnp.shape, sub_vars)
          == jax.tree_util.tree_map(jnp.shape, ref_vars))
  jax.tree_util.tree_map(np.testing.assert_array_equal, sub_vars, ref_vars)

  variables = _random_like(ref_vars, seed=size)
  y_ref = ref.apply(variables, x)
  y_sub = sub.apply(variables, x)
  assert y_sub.shape == y_ref.shape
  np.testing.assert_allclose(y_sub, y_ref, rtol=1e-5, atol=1e-5)

  # Gradients with respect to the input and every parameter.
  cotangent = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)

  def grads(module):
    loss = lambda v, x: jnp.vdot(module.apply(v, x), cotangent)
    return jax.grad(loss, argnums=(0, 1))(variables, x)

  g_ref, g_sub = grads(ref), grads(sub)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
      g_sub, g_ref)


@pytest.mark.parametrize('kernel,stride,padding', CASES)
@pytest.mark.parametrize('size', [5, 8])
def test_matches_conv_transpose_2d(kernel, stride, padding, size):
  _compare(2, size, kernel, stride, padding)


@pytest.mark.parametrize('kernel,stride,padding', [
    (2, 2, 'SAME'), (2, 2, 'VALID'), (4, 2, 'SAME'), (3, 2, 'VALID')])
@pytest.mark.parametrize('size', [3, 4])
def test_matches_conv_transpose_3d(kernel, stride, padding, size):
  _compare(3, size, kernel, stride, padding)


@pytest.mark.parametrize('kernel,stride,padding', [(4, 2, 'SAME'), (3, 2, 'VALID')])
def test_matches_conv_transpose_1d(kernel, stride, padding):
  _compare(1, 7, kernel, stride, padding)


def test_transpose_kernel():
  _compare(2, 6, 4, 2, 'SAME', transpose_kernel=True)
  _compare(3, 3, 3, 2, 'VALID', transpose_kernel=True)


def test_mixed_strides_and_kernels():
  kwargs = dict(features=2, kernel_size=(4, 3), strides=(2, 1), padding='SAME')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 6, 3)), jnp.float32)
  variables = _random_like(nn.ConvTranspose(**kwargs).init(jax.random.key(0), x), 1)
  np.testing.assert_allclose(
      upsample.SubpixelConvTranspose(**kwargs).apply(variables, x),
      nn.ConvTranspose(**kwargs).apply(variables, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('batch_shape', [(), (2, 3)])
def test_batch_axes_like_flax(batch_shape):
  _compare(2, 5, 4, 2, 'SAME', batch_shape=batch_shape)


def test_no_bias_and_dtypes():
  x = jnp.ones((1, 4, 4, 3), jnp.float32)
  for kwargs in [dict(use_bias=False), dict(dtype=jnp.bfloat16),
                 dict(param_dtype=jnp.bfloat16)]:
    ref = nn.ConvTranspose(5, (4, 4), (2, 2), **kwargs)
    sub = upsample.SubpixelConvTranspose(5, (4, 4), (2, 2), **kwargs)
    ref_vars, sub_vars = ref.init(jax.random.key(0), x), sub.init(jax.random.key(0), x)
    assert (jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), sub_vars)
            == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), ref_vars))
    y_ref, y_sub = ref.apply(ref_vars, x), sub.apply(ref_vars, x)
    assert y_sub.dtype == y_ref.dtype
    np.testing.assert_allclose(np.asarray(y_sub, np.float32),
                               np.asarray(y_ref, np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('padding', ['CIRCULAR', 'same', [(1, 1)]])
def test_unsupported_padding_raises(padding):
  x = jnp.ones((1, 4, 4, 3))
  with pytest.raises(ValueError):
    upsample.SubpixelConvTranspose(2, (4, 4), (2, 2), padding=padding).init(
        jax.random.key(0), x)


def test_bad_strides_raise():
  x = jnp.ones((1, 4, 4, 3))
  with pytest.raises(ValueError, match='strides'):
    upsample.SubpixelConvTranspose(2, (4, 4), (2, 2, 2)).init(
        jax.random.key(0), x)


def test_upsampler_registry():
  assert upsample.upsampler('subpixel') is upsample.SubpixelConvTranspose
  assert upsample.upsampler('conv_transpose') is nn.ConvTranspose
  assert upsample.upsampler('resize_conv') is upsample.ResizeConv
  with pytest.raises(ValueError, match='Unsupported upsample'):
    upsample.upsampler('bilinear')


def test_dcgan_uses_subpixel_with_unchanged_param_counts():
  assert dcgan.Generator().upsample == 'subpixel'
  z = jnp.zeros((1, 100))
  shapes = {}
  for upsample in ('subpixel', 'conv_transpose'):
    variables = jax.eval_shape(dcgan.Generator(upsample=upsample).init,
                               jax.random.key(0), z)
    shapes[upsample] = jax.tree_util.tree_map(jnp.shape, variables)
    assert dcgan.count_params(variables['params']) == 27_265_281
  assert shapes['subpixel'] == shapes['conv_transpose']
  d_vars = jax.eval_shape(dcgan.Discriminator().init, jax.random.key(0),
                          jnp.zeros((1, 128, 128, 1)))
  assert dcgan.count_params(d_vars['params']) == 582_785


def test_dcgan_generator_same_images():
  """Small generator: both up-convolutions give the same images."""
  kwargs = dict(base_size=4, base_features=8, up_features=(4, 4))
  z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 100)), jnp.float32)
  variables = _random_like(
      dcgan.Generator(upsample='conv_transpose', **kwargs).init(
          jax.random.key(0), z), seed=3)
  np.testing.assert_allclose(
      dcgan.Generator(upsample='subpixel', **kwargs).apply(variables, z),
      dcgan.Generator(upsample='conv_transpose', **kwargs).apply(variables, z),
      rtol=1e-4, atol=1e-4)  # float32 sums in another order


@pytest.mark.parametrize('nd,kernel,stride,padding', [
    (2, 3, 2, 'SAME'), (2, 3, 1, 'SAME'), (2, 4, 2, 'VALID'), (2, 3, 2, 1),
    (3, 3, 2, 'SAME'), (3, 2, 2, 'VALID')])
@pytest.mark.parametrize('size', [5, 8])
def test_fast_grad_conv_matches_conv(nd, kernel, stride, padding, size):
  kwargs = dict(features=4, kernel_size=(kernel,) * nd, strides=stride,
                padding=padding)
  ref, fast = nn.Conv(**kwargs), convs.FastGradConv(**kwargs)
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.normal(size=(2,) + (size,) * nd + (3,)), jnp.float32)
  ref_vars = ref.init(jax.random.key(0), x)
  assert (jax.tree_util.tree_map(jnp.shape, fast.init(jax.random.key(0), x))
          == jax.tree_util.tree_map(jnp.shape, ref_vars))
  variables = _random_like(ref_vars, seed=size)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  close(fast.apply(variables, x), ref.apply(variables, x))
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  jax.tree_util.tree_map(close, jax.grad(loss(fast), (0, 1))(variables, x),
                         jax.grad(loss(ref), (0, 1))(variables, x))

  # Second order, as WGAN-GP's gradient penalty needs.
  def penalty(m):
    def fn(v, x):
      g = jax.grad(lambda x: jnp.sum(m.apply(v, x) ** 2))(x)
      return jnp.sum(g ** 2)
    return fn
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3),
      jax.grad(penalty(fast))(variables, x), jax.grad(penalty(ref))(variables, x))


def test_conv_registry():
  assert convs.conv('fast_grad') is convs.FastGradConv
  assert convs.conv('xla') is nn.Conv
  assert convs.conv('depth_to_channels') is convs.DepthToChannelsConv
  with pytest.raises(ValueError, match='Unsupported conv'):
    convs.conv('winograd')


@pytest.mark.parametrize('dims', [2, 3])
def test_resize_conv_is_nearest_upsampling_then_conv(dims):
  shape = (2,) + (5,) * dims + (3,)
  x = jax.random.normal(jax.random.key(1), shape)
  kernel = (4,) * dims if dims == 2 else (2,) * dims
  layer = upsample.ResizeConv(6, kernel, strides=2)
  params = layer.init(jax.random.key(2), x)
  transposed = nn.ConvTranspose(6, kernel, strides=(2,) * dims)
  # Same parameter names and shapes as the layer it replaces.
  assert (jax.tree.map(jnp.shape, params) ==
          jax.tree.map(jnp.shape, transposed.init(jax.random.key(2), x)))
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
  up = x
  for axis in range(1, dims + 1):
    up = jnp.repeat(up, 2, axis=axis)
  expected = nn.Conv(6, kernel, padding='SAME').apply(params, up)
  np.testing.assert_allclose(layer.apply(params, x), expected, atol=1e-5)


def test_resize_conv_draws_no_checkerboard():
  """A constant input gives a constant interior, unlike a transposed conv
  whose 3x3 kernel overlaps unevenly at stride 2 (Odena et al. 2016)."""
  x = jnp.ones((1, 8, 8, 1))
  for cls, checkerboard in ((upsample.ResizeConv, False),
                            (nn.ConvTranspose, True)):
    layer = cls(1, (3, 3), strides=(2, 2), use_bias=False)
    y = layer.apply(layer.init(jax.random.key(3), x), x)[0, 2:-2, 2:-2, 0]
    assert (float(jnp.ptp(y)) > 1e-3) == checkerboard, cls


# DepthToChannelsConv: (kernel, padding, kernel dilation, in -> out features,
# input spatial shape). Mondal's 3x3x3 'same' convolutions and its first and
# last layers' channel counts, uneven kernels and sizes, VALID, ints,
# explicit (also negative) pairs, dilation, and circular padding (which
# nn.Conv applies before the convolution).
D2C_CASES = [
    ((3, 3, 3), 'SAME', 1, 2, 4, (6, 5, 4)),
    ((3, 3, 3), 'SAME', 1, 4, 1, (5, 5, 5)),
    ((3, 2, 1), 'SAME', 1, 3, 5, (4, 6, 5)),
    ((1, 3, 3), 'SAME', 1, 3, 2, (3, 4, 5)),
    ((5, 3, 3), 'VALID', 1, 2, 3, (7, 5, 4)),
    ((3, 3, 3), 1, 1, 3, 2, (4, 4, 4)),
    ((3, 3, 3), ((2, 0), (1, 1), (0, 2)), 1, 3, 2, (4, 5, 3)),
    ((3, 3, 3), ((0, -1), (1, 1), (-1, 1)), 1, 3, 2, (5, 4, 5)),
    ((3, 3, 3), 'SAME', (2, 1, 3), 3, 2, (6, 5, 7)),
    ((2, 3, 3), 'CIRCULAR', 1, 3, 2, (4, 5, 4)),
]
# Strided (paper 2's generator encoders: 3x3x3, stride 2, 'same'), also
# uneven strides, sizes that do not divide, VALID and explicit padding.
D2C_STRIDED_CASES = [
    ((3, 3, 3), 'SAME', 2, 2, 4, (8, 8, 8)),
    ((3, 3, 3), 'SAME', 2, 3, 2, (5, 6, 7)),
    ((3, 2, 3), 'VALID', (2, 1, 3), 3, 2, (7, 5, 8)),
    ((4, 3, 3), ((1, 2), (0, 1), (2, 0)), (3, 2, 1), 2, 3, (9, 5, 4)),
]


def _check_same_conv(module, ref, x, seed=0, tol=1e-5):
  """`module` has `ref`'s parameters and computes its values and gradients."""
  ref_vars = ref.init(jax.random.key(0), x)
  new_vars = module.init(jax.random.key(0), x)
  # Same names, shapes and initial values: checkpoints carry over.
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_vars, ref_vars)
  variables = _random_like(ref_vars, seed)
  y_ref = ref.apply(variables, x)
  y_new = module.apply(variables, x)
  assert y_new.shape == y_ref.shape and y_new.dtype == y_ref.dtype
  np.testing.assert_allclose(y_new, y_ref, rtol=tol, atol=tol)
  cotangent = jnp.asarray(np.random.default_rng(seed).normal(
      size=y_ref.shape), jnp.float32)
  grads = lambda m: jax.grad(
      lambda v, x: jnp.vdot(jnp.sin(m.apply(v, x)), cotangent),
      argnums=(0, 1))(variables, x)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
      grads(module), grads(ref))


@pytest.mark.parametrize('kernel,padding,dilation,cin,cout,shape', D2C_CASES)
def test_depth_to_channels_conv_matches_conv(kernel, padding, dilation, cin,
                                             cout, shape):
  kwargs = dict(features=cout, kernel_size=kernel, padding=padding,
                kernel_dilation=dilation)
  x = jnp.asarray(np.random.default_rng(cin).normal(size=(2,) + shape +
                                                    (cin,)), jnp.float32)
  _check_same_conv(convs.DepthToChannelsConv(**kwargs), nn.Conv(**kwargs), x,
                   seed=sum(shape))


@pytest.mark.parametrize('kernel,padding,strides,cin,cout,shape',
                         D2C_STRIDED_CASES)
def test_depth_to_channels_conv_matches_strided_conv(kernel, padding, strides,
                                                     cin, cout, shape):
  kwargs = dict(features=cout, kernel_size=kernel, padding=padding,
                strides=strides)
  x = jnp.asarray(np.random.default_rng(cin).normal(size=(2,) + shape +
                                                    (cin,)), jnp.float32)
  _check_same_conv(convs.DepthToChannelsConv(**kwargs), nn.Conv(**kwargs), x,
                   seed=sum(shape))


@pytest.mark.parametrize('kwargs,batch_shape', [
    (dict(use_bias=False), (2,)),
    (dict(), ()),           # unbatched, as nn.Conv allows
    (dict(), (2, 3)),       # several batch axes
])
def test_depth_to_channels_conv_bias_and_batch_axes(kwargs, batch_shape):
  x = jnp.asarray(np.random.default_rng(1).normal(
      size=batch_shape + (4, 5, 3, 2)), jnp.float32)
  _check_same_conv(convs.DepthToChannelsConv(3, (3, 3, 3), **kwargs),
                   nn.Conv(3, (3, 3, 3), **kwargs), x)


@pytest.mark.parametrize('nd,kwargs,reason', [
    (3, dict(input_dilation=2, padding=1), 'input dilation'),
    (3, dict(feature_group_count=2), 'groups'),
    (2, dict(), 'spatial axes'),              # 2D: already XLA's fast path
    (1, dict(), 'spatial axes'),
])
def test_depth_to_channels_conv_falls_back_to_xla(nd, kwargs, reason):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2,) + (5,) * nd +
                                                  (4,)), jnp.float32)
  module = convs.DepthToChannelsConv(6, (3,) * nd, **kwargs)
  ref = nn.Conv(6, (3,) * nd, **kwargs)
  variables = _random_like(ref.init(jax.random.key(0), x), 3)
  # The very same computation, so bit-identical outputs.
  np.testing.assert_array_equal(module.apply(variables, x),
                                ref.apply(variables, x))
  why = conv_ops.depth_to_channels_fallback(
      x, variables['params']['kernel'], (1,) * nd,
      lhs_dilation=(kwargs.get('input_dilation', 1),) * nd,
      dimension_numbers=('N' + 'DHW'[-nd:] + 'C', 'DHW'[-nd:] + 'IO',
                         'N' + 'DHW'[-nd:] + 'C'),
      feature_group_count=kwargs.get('feature_group_count', 1))
  assert reason in why


def test_depth_to_channels_conv_second_order_and_bfloat16():
  # WGAN-GP's gradient penalty differentiates the input gradient again.
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 4, 3)),
                  jnp.float32)
  ref, new = nn.Conv(2, (3, 3, 3)), convs.DepthToChannelsConv(2, (3, 3, 3))
  variables = _random_like(ref.init(jax.random.key(0), x), 5)

  def penalty(m):
    def fn(v):
      g = jax.grad(lambda x: jnp.sum(m.apply(v, x) ** 2))(x)
      return jnp.sum(g ** 2)
    return fn
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3),
      jax.grad(penalty(new))(variables), jax.grad(penalty(ref))(variables))
  # A bfloat16 compute dtype stays bfloat16, as with nn.Conv.
  kw = dict(features=2, kernel_size=(3, 3, 3), dtype=jnp.bfloat16)
  y_ref = nn.Conv(**kw).apply(variables, x)
  y_new = convs.DepthToChannelsConv(**kw).apply(variables, x)
  assert y_new.dtype == y_ref.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y_new, np.float32),
                             np.asarray(y_ref, np.float32), rtol=5e-2,
                             atol=5e-2)


def test_seg_discriminator_same_logits_with_either_conv():
  """Mondal's segmenter (small): the conv option changes neither the
  parameter tree nor the logits, features and gradients."""
  kwargs = dict(num_classes=4, features=(4, 8, 16), upsample='subpixel')
  x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, 8, 8, 8, 2)),
                  jnp.float32)
  labels = jnp.asarray(np.random.default_rng(6).integers(0, 4, (2, 8, 8, 8)))
  ref = mrigan.SegDiscriminator(conv='xla', **kwargs)
  new = mrigan.SegDiscriminator(conv='depth_to_channels', **kwargs)
  variables = ref.init(jax.random.key(0), x)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         new.init(jax.random.key(0), x), variables)
  variables = jax.tree_util.tree_map(
      lambda a, b: a + 0.1 * b, variables, _random_like(variables, 7))

  def loss(model):
    def fn(v):
      logits, feats = model.apply(v, x, return_features=True)
      ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None],
                                axis=-1)
      return jnp.mean(ce), (logits, feats)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(variables)

  (l_ref, (logits_ref, feats_ref)), g_ref = loss(ref)
  (l_new, (logits_new, feats_new)), g_new = loss(new)
  np.testing.assert_allclose(logits_new, logits_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats_new, feats_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l_new, l_ref, rtol=1e-6)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      g_new, g_ref)
