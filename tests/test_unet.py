"""Tests of the 2D/3D UNet: shapes, the paper's parameter count, BN, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrseg.models import unet as unet_lib
from mrseg.models.unet import UNet


def _paper_param_count(in_channels: int = 1, num_classes: int = 2,
                       base: int = 64, depth: int = 4) -> int:
  """Parameter count of Ronneberger's UNet, derived by hand (no BN).

  A k x k conv from c_in to c_out features has k*k*c_in*c_out weights plus
  c_out biases. With f_l = base * 2**l:

  Contracting path, levels l = 0..depth (l = depth is the bottleneck):
    conv3x3(c_in_l -> f_l) + conv3x3(f_l -> f_l), c_in_0 = in_channels,
    c_in_l = f_{l-1}:
      l=0:    9*1*64     + 64   +  9*64*64     + 64   =     37,568
      l=1:    9*64*128   + 128  +  9*128*128   + 128  =    221,440
      l=2:    9*128*256  + 256  +  9*256*256   + 256  =    885,248
      l=3:    9*256*512  + 512  +  9*512*512   + 512  =  3,539,968
      l=4:    9*512*1024 + 1024 +  9*1024*1024 + 1024 = 14,157,824
  Expanding path, levels l = depth-1..0: up-conv 2x2 (2 f_l -> f_l), then
  conv3x3 on the concatenation (2 f_l -> f_l), then conv3x3 (f_l -> f_l):
      l=3:  4*1024*512 + 512 + 9*1024*512 + 512 + 9*512*512 + 512 = 9,176,576
      l=2:  4*512*256  + 256 + 9*512*256  + 256 + 9*256*256 + 256 = 2,294,528
      l=1:  4*256*128  + 128 + 9*256*128  + 128 + 9*128*128 + 128 =   573,824
      l=0:  4*128*64   + 64  + 9*128*64   + 64  + 9*64*64   + 64  =   143,552
  Output 1x1 conv (64 -> 2): 64*2 + 2 = 130.
  Total: 18,842,048 + 12,188,480 + 130 = 31,030,658.
  """
  total = 0
  c_in = in_channels
  for level in range(depth + 1):
    f = base * 2**level
    total += 9 * c_in * f + f + 9 * f * f + f
    c_in = f
  for level in reversed(range(depth)):
    f = base * 2**level
    total += 4 * 2 * f * f + f  # up-conv halves the features
    total += 9 * 2 * f * f + f + 9 * f * f + f
  total += base * num_classes + num_classes
  return total


def test_paper_parameter_count():
  assert _paper_param_count() == 31_030_658
  model = UNet(num_classes=2, depth=4, base_features=64)
  # eval_shape: the count without allocating or initialising 31M floats.
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
  assert set(variables) == {'params'}
  assert unet_lib.count_params(variables['params']) == 31_030_658


def test_3d_parameter_count_formula():
  # 3x3x3 convs (27 per in/out pair) and 2x2x2 up-convs (8 per pair).
  model = UNet(num_classes=4, depth=2, base_features=4)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 2))))
  expected = 0
  c_in = 2
  for level in range(3):
    f = 4 * 2**level
    expected += 27 * c_in * f + f + 27 * f * f + f
    c_in = f
  for level in reversed(range(2)):
    f = 4 * 2**level
    expected += 8 * 2 * f * f + f + 27 * 2 * f * f + f + 27 * f * f + f
  expected += 4 * 4 + 4
  assert unet_lib.count_params(variables['params']) == expected


TINY = dict(num_classes=3, depth=2, base_features=4)


@pytest.fixture(scope='module')
def tiny_2d():
  """A tiny 2D UNet and its variables, shared: initialisation dominates."""
  model = UNet(**TINY)
  variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((2, 32, 32, 1)))
  return model, variables


def _check_shapes(model, variables, x):
  logits, features = model.apply(variables, x, return_features=True)
  assert logits.shape == x.shape[:-1] + (3,)
  assert logits.dtype == jnp.float32
  spatial = tuple(s // 4 for s in x.shape[1:-1])
  assert features.shape == (x.shape[0],) + spatial + (16,)
  encoded = model.apply(variables, x, method=UNet.encode)
  np.testing.assert_allclose(encoded, features)
  assert np.all(np.isfinite(logits))


def test_2d_output_shapes_and_features(tiny_2d):
  model, variables = tiny_2d
  _check_shapes(model, variables,
                jax.random.normal(jax.random.key(0), (2, 32, 32, 1)))
  # 'same' padding: any size divisible by 2**depth works with one set of
  # parameters.
  _check_shapes(model, variables, jnp.ones((1, 8, 12, 1)))


def test_3d_output_shapes_and_features():
  model = UNet(**TINY)
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 16, 2))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  assert variables['params']['encoder']['down0']['conv0']['kernel'].shape == (
      3, 3, 3, 2, 4)
  _check_shapes(model, variables, x)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny_2d):
  model, variables = tiny_2d
  bf16 = UNet(**TINY, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
  shapes = jax.eval_shape(bf16.init, jax.random.key(0), x)
  dtypes = {p.dtype for p in jax.tree_util.tree_leaves(shapes['params'])}
  assert dtypes == {jnp.dtype(jnp.float32)}
  logits = bf16.apply(variables, x)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, model.apply(variables, x), atol=0.1,
                             rtol=0.05)


def test_batch_norm_updates_batch_stats():
  model = UNet(num_classes=2, depth=2, base_features=4, norm='batch')
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1)) * 3 + 1
  variables = jax.jit(model.init)(jax.random.key(1), x)
  assert 'batch_stats' in variables
  # Convs before batch norm carry no bias (the mean subtraction cancels it).
  assert 'bias' not in variables['params']['encoder']['down0']['conv0']
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert len(before) == len(after) > 0
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # Eval mode uses the running averages and needs no mutable collection.
  out = model.apply({**variables, **updates}, x, train=False)
  assert out.shape == (2, 16, 16, 2)


def test_instance_norm_has_params_but_no_batch_stats():
  model = UNet(num_classes=2, depth=1, base_features=2, norm='instance')
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 8, 8, 8, 1)))
  assert set(variables) == {'params'}
  norm = variables['params']['encoder']['down0']['norm0']
  assert norm['scale'].shape == norm['bias'].shape == (2,)


def test_dropout_at_bottleneck_needs_rng_and_is_off_in_eval(tiny_2d):
  _, variables = tiny_2d  # dropout adds no parameters
  model = UNet(**TINY, dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
  eval_a = model.apply(variables, x)
  eval_b = model.apply(variables, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = model.apply(variables, x, train=True,
                        rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_a, eval_a)
  # Features are taken before dropout, so they stay deterministic.
  _, features = model.apply(variables, x, train=True, return_features=True,
                            rngs={'dropout': jax.random.key(2)})
  np.testing.assert_array_equal(features,
                                model.apply(variables, x, method=UNet.encode))


@pytest.mark.parametrize('shape', [(1, 30, 32, 1), (1, 16, 16, 10, 1)])
def test_indivisible_size_raises(shape):
  model = UNet(num_classes=2, depth=2, base_features=4)
  with pytest.raises(ValueError, match='divisible by 2\\*\\*2 = 4'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def test_bad_rank_and_options_raise():
  def init(model, shape):
    # eval_shape: the errors are raised while tracing; nothing is computed.
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))

  with pytest.raises(ValueError, match='spatial dimensions'):
    init(UNet(depth=1, base_features=2, spatial_dims=3), (1, 8, 8, 1))
  with pytest.raises(ValueError, match='expects'):
    init(UNet(depth=1, base_features=2), (8, 8))
  with pytest.raises(ValueError, match='Unsupported norm'):
    init(UNet(depth=1, base_features=2, norm='layer'), (1, 8, 8, 1))
  with pytest.raises(ValueError, match='Unsupported upsample'):
    init(UNet(depth=1, base_features=2, upsample='nearest'), (1, 8, 8, 1))
  with pytest.raises(ValueError, match='Unsupported kernel_init'):
    init(UNet(depth=1, base_features=2, weight_init='zeros'), (1, 8, 8, 1))


def test_fast_grad_convolutions_compute_the_same_unet():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  plain = UNet(num_classes=2, depth=2, base_features=4)
  fast = UNet(num_classes=2, depth=2, base_features=4, conv="fast_grad")
  variables = plain.init(jax.random.key(0), x)
  fast_variables = fast.init(jax.random.key(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(fast_variables)
  np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda v: jnp.sum(m.apply(v, x) ** 2)
  g_plain = jax.grad(loss(plain))(variables)
  g_fast = jax.grad(loss(fast))(variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-4),
               g_fast, g_plain)


def test_zscore_input_norm_makes_the_unet_blind_to_gain_and_offset():
  """Per-image normalisation: a dim, low-contrast copy of an image gets the
  same prediction as the image (the real set's slices vary in brightness)."""
  model = UNet(num_classes=2, depth=2, base_features=4, input_norm='zscore')
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
  variables = model.init(jax.random.key(1), x)
  np.testing.assert_allclose(model.apply(variables, 0.3 * x + 0.05),
                             model.apply(variables, x), rtol=1e-4, atol=1e-4)
  plain = UNet(num_classes=2, depth=2, base_features=4)
  assert not np.allclose(plain.apply(variables, 0.3 * x + 0.05),
                         plain.apply(variables, x), atol=1e-3)
  normed = unet_lib.normalize_input(x, 'zscore')
  np.testing.assert_allclose(normed.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(normed.std(axis=(1, 2, 3)), 1, atol=1e-4)
  with pytest.raises(ValueError, match='input_norm'):
    UNet(input_norm='minmax').init(jax.random.key(0), x)
