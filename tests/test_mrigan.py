"""Tests of paper 2's models (mrseg.models.mrigan) and its K+1-class losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrseg import losses
from mrseg.models import mrigan
from mrseg.models import mrigan_blocks
from mrseg.models import mrigan_generator

# ---------------------------------------------------------------------------
# Losses, against numpy on tiny arrays.


def _np_lse(logits):
  m = logits.max(axis=-1, keepdims=True)
  return (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[..., 0]


def _np_softplus(x):
  return np.logaddexp(0.0, x)


def _tiny_logits_labels():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4)).astype(np.float32) * 2
  labels = np.array([[0, 1, 255], [3, 2, 1]], np.int32)
  return logits, labels


def test_labelled_loss_matches_numpy():
  logits, labels = _tiny_logits_labels()
  weights = np.array(losses.MONDAL_CLASS_WEIGHTS, np.float32)
  valid = labels != 255
  safe = np.where(valid, labels, 0)
  ce = _np_lse(logits) - np.take_along_axis(logits, safe[..., None], -1)[..., 0]
  w = weights[safe] * valid
  # 'voxels': sum(w * ce) over valid voxels / number of valid voxels (5).
  expected = (w * ce).sum() / valid.sum()
  got = losses.labelled_loss(logits, labels,
                             class_weights=losses.MONDAL_CLASS_WEIGHTS)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # 'weights': a weighted mean.
  got = losses.labelled_loss(logits, labels, losses.MONDAL_CLASS_WEIGHTS,
                             normalize='weights')
  np.testing.assert_allclose(got, (w * ce).sum() / w.sum(), rtol=1e-5)
  # No weights: plain mean cross-entropy over the valid voxels.
  got = losses.softmax_cross_entropy(logits, labels)
  np.testing.assert_allclose(got, ce[valid].mean(), rtol=1e-5)
  # A mask removes voxels like the ignore label does.
  mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
  keep = valid & (mask > 0)
  got = losses.softmax_cross_entropy(logits, labels, mask=mask)
  np.testing.assert_allclose(got, ce[keep].mean(), rtol=1e-5)


def test_labelled_loss_edge_cases():
  logits, labels = _tiny_logits_labels()
  all_ignored = np.full_like(labels, 255)
  assert float(losses.labelled_loss(logits, all_ignored)) == 0.0
  # A label outside [0, K) that is not the ignore label fails loudly (NaN).
  bad = np.where(labels == 3, 7, labels)
  assert np.isnan(losses.labelled_loss(logits, bad))
  with pytest.raises(ValueError, match='one entry per class'):
    losses.labelled_loss(logits, labels, class_weights=(1.0, 2.0))
  with pytest.raises(ValueError, match='normalize'):
    losses.labelled_loss(logits, labels, normalize='mean')


def test_median_frequency_weights():
  # f = (0.5, 0.1, 0.25, 0.15), median 0.2: w = 0.2 / f.
  weights = losses.median_frequency_weights([50, 10, 25, 15])
  np.testing.assert_allclose(weights, [0.4, 2.0, 0.8, 0.2 / 0.15])
  # Every class then weighs the same in total: w_c f_c = median(f).
  np.testing.assert_allclose(weights * [0.5, 0.1, 0.25, 0.15], 0.2)
  # An absent class is left out of the median (of 0.6, 0.3, 0.1) and
  # weighs 1.
  np.testing.assert_allclose(losses.median_frequency_weights([60, 0, 30, 10]),
                             [0.5, 1.0, 1.0, 3.0])
  with pytest.raises(ValueError, match='No labelled voxel'):
    losses.median_frequency_weights([0, 0, 0])


def test_unlabelled_and_fake_losses_match_numpy():
  logits, _ = _tiny_logits_labels()
  lse = _np_lse(logits)
  # Mondal's form of the unlabelled loss, as written in the issue.
  expected_unl = -lse.mean() + _np_softplus(lse).mean()
  np.testing.assert_allclose(losses.unlabelled_loss(logits), expected_unl,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.fake_loss(logits),
                             _np_softplus(lse).mean(), rtol=1e-5)
  mask = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
  np.testing.assert_allclose(losses.fake_loss(logits, mask),
                             _np_softplus(lse)[mask > 0].mean(), rtol=1e-5)


def test_k_plus_one_losses_saturate_finitely():
  big = np.zeros((2, 2, 4), np.float32)
  big[0] = 1e4  # confidently real
  big[1] = -1e4  # confidently fake
  labels = np.array([[0, 1], [2, 3]], np.int32)

  def total(l):
    return (losses.labelled_loss(l, labels, losses.MONDAL_CLASS_WEIGHTS)
            + losses.unlabelled_loss(l) + losses.fake_loss(l))

  value, grad = jax.jit(jax.value_and_grad(total))(jnp.asarray(big))
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  # Real voxels: -log D = softplus(-lse) -> 0; fake voxels: lse ~ -1e4.
  np.testing.assert_allclose(losses.unlabelled_loss(big[:1]), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.fake_loss(big[1:]), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.unlabelled_loss(big[1:]),
                             1e4 - np.log(4), rtol=1e-6)


def test_feature_matching_loss():
  real = np.zeros((2, 2, 2, 2, 3), np.float32)
  fake = np.zeros((1, 2, 2, 2, 3), np.float32)
  real[..., 0] = 1.0  # channel means: real (1, 0, 0.5), fake (0, 0, -0.25)
  real[0, ..., 2] = 1.0
  fake[0, 0, ..., 2] = -0.5
  diff = np.array([1.0, 0.0, 0.75])
  np.testing.assert_allclose(losses.feature_matching_loss(real, fake, 'l2'),
                             np.mean(diff**2), rtol=1e-6)
  np.testing.assert_allclose(losses.feature_matching_loss(real, fake, 'l1'),
                             np.mean(np.abs(diff)), rtol=1e-6)
  # Mondal's reduction: batch mean only, per voxel and channel.
  expected = np.abs(real.mean(0) - fake.mean(0)).mean()
  np.testing.assert_allclose(
      losses.feature_matching_loss(real, fake, 'l1', reduce_spatial=False),
      expected, rtol=1e-6)
  with pytest.raises(ValueError, match='feature matching kind'):
    losses.feature_matching_loss(real, fake, 'l3')


def test_paper_eq7_8_loss_by_hand():
  # One generated patch of 2 voxels on a 1-voxel feature grid, K = 1: the
  # logits 0 and log 3 give -log(1 - D) = softplus(l) = log 2 and log 4,
  # averaged over the cell: 1.5 log 2. C = E f(x) + 1.5 log 2 per channel.
  real_mean = np.array([[2.0, 0.0]], np.float32)        # [s=1, F=2]
  real = np.array([[[1.0, 0.0]]], np.float32)           # [B=1, 1, 2]
  fake_logits = np.log(np.array([[[1.0], [3.0]]], np.float32))  # [1, 2, 1]
  s = 1.5 * np.log(2.0)
  expected = np.mean([(2.0 + s - 1.0)**2, (0.0 + s - 0.0)**2])
  np.testing.assert_allclose(
      losses.paper_eq7_8_loss(real_mean, real, fake_logits), expected,
      rtol=1e-6)
  # The mean of the logs over a cell, not the log of the mean of D.
  assert not np.isclose(expected, np.mean(
      [(1.0 + np.log(3.0))**2, np.log(3.0)**2]))
  with pytest.raises(ValueError, match='one to one'):
    losses.paper_eq7_8_loss(real_mean, real, np.zeros((2, 2, 1)))
  with pytest.raises(ValueError, match='in blocks'):
    losses.paper_eq7_8_loss(real_mean, np.zeros((1, 3, 2)), fake_logits)


def test_sigmoid_rampup_at_start_middle_and_end():
  ramp = lambda step: float(losses.sigmoid_rampup(step, 100))
  np.testing.assert_allclose(ramp(0), np.exp(-5.0), rtol=1e-6)
  np.testing.assert_allclose(ramp(50), np.exp(-1.25), rtol=1e-6)
  assert ramp(99) < 1.0 and ramp(100) == 1.0 and ramp(10**6) == 1.0
  assert float(losses.sigmoid_rampup(0, 0)) == 1.0  # no ramp
  # Traced steps (inside the jitted train step) give the same numbers.
  np.testing.assert_allclose(
      jax.jit(lambda t: losses.sigmoid_rampup(t, 100))(jnp.int32(50)),
      np.exp(-1.25), rtol=1e-6)


def test_boundary_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 3, 1)).astype(np.float32) * 3
  targets = (rng.uniform(size=(2, 3, 3)) > 0.6).astype(np.float32)
  l = logits[..., 0]
  per_voxel = 4.0 * targets * _np_softplus(-l) + (1 - targets) * _np_softplus(l)
  np.testing.assert_allclose(
      losses.boundary_loss(logits, targets, pos_weight=4.0), per_voxel.mean(),
      rtol=1e-5)
  per_voxel = targets * _np_softplus(-l) + (1 - targets) * _np_softplus(l)
  np.testing.assert_allclose(losses.boundary_loss(l, targets),
                             per_voxel.mean(), rtol=1e-5)


def test_soft_dice_loss():
  labels = np.array([[0, 1, 1, 2]], np.int32)
  perfect = 50.0 * np.eye(3, dtype=np.float32)[labels]
  assert float(losses.soft_dice_loss(perfect, labels)) < 1e-6
  # Uniform predictions: p = 1/3 everywhere; per class Dice
  # 2 * (n_c / 3) / (4 / 3 + n_c) with n_c = 1, 2, 1.
  uniform = np.zeros((1, 4, 3), np.float32)
  n = np.array([1.0, 2.0, 1.0])
  dice = 2 * (n / 3) / (4 / 3 + n)
  np.testing.assert_allclose(losses.soft_dice_loss(uniform, labels),
                             1 - dice.mean(), rtol=1e-5)
  np.testing.assert_allclose(
      losses.soft_dice_loss(uniform, labels, include_background=False),
      1 - dice[1:].mean(), rtol=1e-5)
  # An ignored voxel drops out of both sums.
  ignored = np.array([[0, 1, 1, 255]], np.int32)
  n = np.array([1.0, 2.0, 0.0])
  dice = (2 * (n / 3) + 1e-5) / (1.0 + n + 1e-5)
  np.testing.assert_allclose(losses.soft_dice_loss(uniform, ignored),
                             1 - dice.mean(), rtol=1e-5)
  total = losses.dice_ce_loss(uniform, labels)
  np.testing.assert_allclose(
      total, losses.soft_dice_loss(uniform, labels) + np.log(3), rtol=1e-5)
  # Per-class sums of two halves of a batch add up to the batch's Dice.
  logits = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
  both = np.concatenate([labels, ignored])
  halves = [losses.soft_dice_terms(logits[i:i + 1], both[i:i + 1])
            for i in range(2)]
  summed = [halves[0][j] + halves[1][j] for j in range(2)]
  np.testing.assert_allclose(losses.dice_from_terms(*summed),
                             losses.soft_dice_loss(logits, both), rtol=1e-6)


# ---------------------------------------------------------------------------
# boundaries_from_labels.


def test_boundaries_from_labels_2d_square():
  labels = np.zeros((1, 4, 4), np.int32)
  labels[0, 1:3, 1:3] = 1
  expected = np.array([[0, 1, 1, 0],
                       [1, 1, 1, 1],
                       [1, 1, 1, 1],
                       [0, 1, 1, 0]], np.float32)
  got = jax.jit(mrigan_generator.boundaries_from_labels,
                static_argnums=1)(labels, 2)
  np.testing.assert_array_equal(got[0], expected)


def test_boundaries_from_labels_3d_and_ignore():
  labels = np.zeros((2, 3, 3, 3), np.int32)
  labels[0, 1, 1, 1] = 2
  # Example 1: a lone voxel of 1 next to an ignored voxel only.
  labels[1] = 255
  labels[1, 0, 0, 0] = 1
  labels[1, 0, 0, 1] = 1
  got = np.asarray(mrigan_generator.boundaries_from_labels(labels, 4))
  expected0 = np.zeros((3, 3, 3), np.float32)
  expected0[1, 1, 1] = 1
  for axis in range(3):
    for step in (-1, 1):
      idx = [1, 1, 1]
      idx[axis] += step
      expected0[tuple(idx)] = 1
  np.testing.assert_array_equal(got[0], expected0)
  assert got[0].sum() == 7
  # Ignored voxels neither are nor make boundaries; equal labels do not.
  np.testing.assert_array_equal(got[1], 0)


# ---------------------------------------------------------------------------
# Discriminator.


def _seg_discriminator_param_count(in_channels: int = 2, num_classes: int = 4,
                                   features=(32, 64, 128, 256)) -> int:
  """Parameter count of Mondal's discriminator, derived by hand.

  Every layer is weight-normalised: a k^3 convolution from c_in to c_out has
  27 c_in c_out kernel weights (k = 3) plus c_out biases plus c_out scales.

  Encoder (two convs per level):
    l=0: 27*2*32     + 64  + 27*32*32   + 64  =    29,504
    l=1: 27*32*64    + 128 + 27*64*64   + 128 =   166,144
    l=2: 27*64*128   + 256 + 27*128*128 + 256 =   664,064
    l=3: 27*128*256  + 512 + 27*256*256 + 512 = 2,655,232
  Decoder, levels 2..0: up-conv 2^3 (f_{l+1} -> f_{l+1}), then a conv on the
  concatenation (f_l + f_{l+1} -> f_l), then a conv (f_l -> f_l):
    l=2: 8*256*256 + 512 + 27*384*128 + 256 + 27*128*128 + 256 = 2,294,784
    l=1: 8*128*128 + 256 + 27*192*64  + 128 + 27*64*64   + 128 =   573,952
    l=0: 8*64*64   + 128 + 27*96*32   + 64  + 27*32*32   + 64  =   143,616
  Output conv 3^3 (32 -> 4): 27*32*4 + 4 + 4 = 3,464.
  Total: 3,514,944 + 3,012,352 + 3,464 = 6,530,760.
  """
  total = 0
  c_in = in_channels
  for f in features:
    total += 27 * c_in * f + 2 * f + 27 * f * f + 2 * f
    c_in = f
  for level in reversed(range(len(features) - 1)):
    f, g = features[level], features[level + 1]
    total += 8 * g * g + 2 * g
    total += 27 * (f + g) * f + 2 * f + 27 * f * f + 2 * f
  total += 27 * features[0] * num_classes + 2 * num_classes
  return total


def test_seg_discriminator_full_size_shapes_and_count():
  model = mrigan.SegDiscriminator()
  x = jnp.zeros((2, 32, 32, 32, 2))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert set(variables) == {'params'}
  assert _seg_discriminator_param_count() == 6_530_760
  assert mrigan.count_params(variables['params']) == 6_530_760
  logits, feats = jax.eval_shape(
      lambda v, x: model.apply(v, x, return_features=True), variables, x)
  assert logits.shape == (2, 32, 32, 32, 4) and logits.dtype == jnp.float32
  assert feats.shape == (2, 4, 4, 4, 256)
  # T1 only: one input channel, 27 * 32 fewer weights.
  x1 = jnp.zeros((2, 32, 32, 32, 1))
  v1 = jax.eval_shape(lambda: model.init(jax.random.key(0), x1))
  assert mrigan.count_params(v1['params']) == _seg_discriminator_param_count(
      in_channels=1) == 6_530_760 - 27 * 32
  logits = jax.eval_shape(lambda v, x: model.apply(v, x), v1, x1)
  assert logits.shape == (2, 32, 32, 32, 4)


def _tiny_discriminator(**kw):
  return mrigan.SegDiscriminator(num_classes=4, features=(4, 8), **kw)


def test_seg_discriminator_tiny_forward_weight_norm_and_subpixel():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 1))
  model = _tiny_discriminator()
  sub = _tiny_discriminator(upsample='subpixel')
  drop = _tiny_discriminator(dropout_rate=0.5)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  params = variables['params']
  assert params['enc0_0_wn']['enc0_0/kernel/scale'].shape == (4,)
  # Weight normalisation: rescaling a raw kernel should change nothing.
  scaled = dict(params, enc0_0=dict(params['enc0_0'],
                                    kernel=params['enc0_0']['kernel'] * 7.0))

  @jax.jit
  def run(variables, scaled, x):
    logits, feats = model.apply(variables, x, return_features=True)
    return dict(
        logits=logits, feats=feats,
        scaled=model.apply({'params': scaled}, x),
        # The sub-pixel up-convolution: same function, same parameters.
        subpixel=sub.apply(variables, x),
        # Channel dropout needs an rng and only acts when training.
        train=drop.apply(variables, x, train=True,
                         rngs={'dropout': jax.random.key(2)}),
        eval=drop.apply(variables, x))

  out = run(variables, scaled, x)
  logits = out['logits']
  assert logits.shape == (2, 8, 8, 8, 4) and out['feats'].shape == (
      2, 4, 4, 4, 8)
  assert np.all(np.isfinite(logits))
  np.testing.assert_allclose(out['scaled'], logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out['subpixel'], logits, rtol=1e-4, atol=1e-5)
  assert not np.allclose(out['train'], logits)
  np.testing.assert_allclose(out['eval'], logits, rtol=1e-6)


def test_seg_discriminator_rejects_bad_input():
  model = _tiny_discriminator()
  with pytest.raises(ValueError, match='divisible by 2'):
    jax.eval_shape(lambda: model.init(jax.random.key(0),
                                      jnp.zeros((1, 7, 8, 8, 1))))
  with pytest.raises(ValueError, match='pool'):
    jax.eval_shape(lambda: _tiny_discriminator(pool='sum').init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1))))


# ---------------------------------------------------------------------------
# Generators.


def test_noise_generator_full_size_shapes_and_count():
  model = mrigan.NoiseGenerator()
  z = jnp.zeros((3, 200))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), z))
  assert set(variables) == {'params', 'batch_stats'}
  # Dense 200 -> 8*512 (no bias, BN follows) + BN(512) scale/bias; up-convs
  # 2^3 kernels without bias + BN; output up-conv with bias + WN scale.
  expected = (200 * 4096 + 2 * 512 + 8 * 512 * 256 + 2 * 256
              + 8 * 256 * 128 + 2 * 128 + 8 * 128 * 64 + 2 * 64
              + 8 * 64 * 2 + 2 + 2)
  assert mrigan.count_params(variables['params']) == expected == 2_198_404
  out = jax.eval_shape(lambda v, z: model.apply(v, z), variables, z)
  assert out.shape == (3, 32, 32, 32, 2)


def test_noise_generator_tiny_train_step():
  model = mrigan.NoiseGenerator(out_channels=1, base_features=8,
                                up_features=(4,), base_size=2)
  z = jax.random.uniform(jax.random.key(0), (2, 6), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(1), z)
  out, updates = jax.jit(
      lambda v, z: model.apply(v, z, train=True, mutable=['batch_stats']))(
          variables, z)
  assert out.shape == (2, 8, 8, 8, 1)
  assert np.all(np.abs(out) <= 1)
  assert 'batch_stats' in updates


def test_gt_layer_statistics():
  x = 3.0 * jax.random.normal(jax.random.key(0), (2, 4, 4, 4, 3)) + 1.5
  code = jax.random.normal(jax.random.key(1), (2, 5))
  layer = mrigan_blocks.GTLayer(mlp_layers=3, mlp_features=7)
  variables = jax.jit(layer.init)(jax.random.key(2), x, code)
  params = variables['params']
  assert set(params['r_sigma']) == {'dense0', 'dense1', 'dense2'}
  apply = jax.jit(layer.apply)
  y = apply(variables, x, code)
  mlp = mrigan_blocks.CodeMLP(3, 3, 7)
  r_sigma = mlp.apply({'params': params['r_sigma']}, code)
  r_mu = mlp.apply({'params': params['r_mu']}, code)
  mean = np.asarray(y).mean(axis=(1, 2, 3))
  std = np.asarray(y).std(axis=(1, 2, 3))
  np.testing.assert_allclose(mean, r_mu, atol=1e-4)
  np.testing.assert_allclose(std, np.abs(r_sigma), rtol=1e-4, atol=1e-5)
  # A code map modulates per voxel and must match x spatially.
  code_map = jax.random.normal(jax.random.key(3), (2, 4, 4, 4, 5))
  assert apply(variables, x, code_map).shape == x.shape
  with pytest.raises(ValueError, match='match the features spatially'):
    layer.apply(variables, x, code_map[:, :2])


def test_spade_layer_varies_spatially_with_the_map():
  # Features constant over space normalise to 0, so the output is R_mu of
  # the tissue map: a change of the map changes the output where it is.
  x = jnp.broadcast_to(jnp.arange(3.0), (1, 8, 8, 8, 3))
  uniform = jnp.ones((1, 16, 16, 16), jnp.int32)  # all CSF, at 2x the size
  split = uniform.at[:, 8:].set(2)  # GM in the half x >= 4 of the features
  layer = mrigan_blocks.SpadeLayer(hidden_features=4)
  variables = layer.init(jax.random.key(0), x, jax.nn.one_hot(uniform, 4))
  apply = lambda t: np.asarray(layer.apply(variables, x, jax.nn.one_hot(t, 4)))
  y_uniform, y_split = apply(uniform), apply(split)
  # Two 3x3x3 convolutions see 2 voxels away: x <= 1 cannot see GM.
  np.testing.assert_allclose(y_split[:, :2], y_uniform[:, :2], atol=1e-6)
  assert np.abs(y_split[:, 4:] - y_uniform[:, 4:]).min() > 0
  with pytest.raises(ValueError, match='averaged down'):
    layer.apply(variables, x, jax.nn.one_hot(uniform[:, :12], 4))


def _convs_3d(fn, *args):
  """How many 3D (rank-5) convolutions fn's jaxpr runs, sub-jaxprs included."""
  def count(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        n += eqn.invars[0].aval.ndim == 5
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else (param,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            n += count(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            n += count(sub)
    return n
  return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_spade_generator_uses_the_configured_conv():
  # SPADE's convolutions go through `conv` like the generator's others:
  # 'depth_to_channels' adds no 3D convolution (XLA:CPU's slow path) over
  # the global code's, and changes neither parameters nor outputs.
  mri = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 2))
  labels = _labels((2, 8, 8, 8))
  kwargs = dict(out_channels=2, upsample='subpixel', **_TINY)
  make = lambda code, conv: mrigan_generator.MRIGANGenerator(
      tissue_code=code, conv=conv, **kwargs)
  spade_xla, spade_d2c = make('spade', 'xla'), make('spade', 'depth_to_channels')
  variables = spade_xla.init(jax.random.key(1), mri, labels)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         spade_d2c.init(jax.random.key(1), mri, labels),
                         variables)
  apply = lambda model: (lambda v: model.apply(v, mri, labels)[0])
  np.testing.assert_allclose(apply(spade_d2c)(variables),
                             apply(spade_xla)(variables), atol=1e-5)
  global_d2c = make('global', 'depth_to_channels')
  global_vars = global_d2c.init(jax.random.key(1), mri, labels)
  assert _convs_3d(apply(spade_xla), variables) > _convs_3d(
      apply(global_d2c), global_vars)
  assert _convs_3d(apply(spade_d2c), variables) == _convs_3d(
      apply(global_d2c), global_vars)


def _labels(shape, num_classes=4, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, num_classes)


def test_mrigan_generator_full_size_shapes():
  model = mrigan_generator.MRIGANGenerator()
  mri = jnp.zeros((2, 32, 32, 32, 2))
  tissues = jnp.zeros((2, 32, 32, 32), jnp.int32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), mri, tissues))
  assert set(variables) == {'params', 'batch_stats'}
  assert {'mri_encoder', 'tissue_encoder', 'block0_gt', 'boundary_decoder',
          'decoder'} <= set(variables['params'])
  patch, boundary = jax.eval_shape(
      lambda v, m, t: model.apply(v, m, t), variables, mri, tissues)
  assert patch.shape == (2, 32, 32, 32, 2) and patch.dtype == jnp.float32
  assert boundary.shape == (2, 32, 32, 32, 1)


# Small widths for the variant tests.
_TINY = dict(features=(4, 8), tissue_features=(4, 8), code_dim=6,
             gt_mlp_features=8, num_gt_blocks=1)


@pytest.mark.parametrize('overrides, inputs, has_boundary', [
    (dict(), ('mri', 'tissues'), True),
    (dict(fusion='concat'), ('mri', 'tissues'), True),  # without GT-layers
    (dict(fusion='none'), ('mri', 'tissues'), True),
    (dict(use_boundary=False), ('mri', 'tissues'), False),
    (dict(tissue_code='spatial'), ('mri', 'tissues'), True),
    (dict(tissue_code='spade'), ('mri', 'tissues'), True),
    (dict(tissue_code='spade', use_boundary=False), ('mri', 'tissues'),
     False),
    (dict(noise_dim=5), ('mri', 'tissues', 'z'), True),
    (dict(tissue_code='spatial', noise_dim=5, fusion='concat'),
     ('mri', 'tissues', 'z'), True),
    # Noise-only generator.
    (dict(use_mri_encoder=False, use_tissue_encoder=False, use_boundary=False,
          fusion='none', noise_dim=5, latent_size=4), ('z',), False),
    # Noise + tissues, no MRI (z styles the tissue layout).
    (dict(use_mri_encoder=False, noise_dim=5, latent_size=4),
     ('tissues', 'z'), True),
])
def test_mrigan_generator_variants_build(overrides, inputs, has_boundary):
  model = mrigan_generator.MRIGANGenerator(out_channels=1,
                                           **{**_TINY, **overrides})
  args = dict(mri=jnp.zeros((2, 8, 8, 8, 1)),
              tissues=jnp.zeros((2, 8, 8, 8), jnp.int32),
              z=jnp.zeros((2, 5)))
  kwargs = {k: args[k] for k in inputs}
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), **kwargs))
  patch, boundary = jax.eval_shape(
      lambda v: model.apply(v, **kwargs), variables)
  assert patch.shape == (2, 8, 8, 8, 1)
  assert (boundary is not None) == has_boundary
  if has_boundary:
    assert boundary.shape == (2, 8, 8, 8, 1)
  names = set(variables['params'])
  assert ('block0_gt' in names) == (overrides.get('fusion', 'gt') == 'gt')
  if overrides.get('tissue_code') == 'spade':
    # SPADE layers in the latent block, the decoder and before the output;
    # the tissue encoder only where the boundary network reads it.
    assert 'shared' in variables['params']['block0_gt']
    assert {'norm0_spade'} <= set(variables['params']['decoder'])
    assert 'out_norm_spade' in names and 'tissue_code' not in names
    assert ('tissue_encoder' in names) == has_boundary


def test_mrigan_generator_tiny_train_step_gradients():
  model = mrigan_generator.MRIGANGenerator(out_channels=2, **_TINY)
  mri = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 2))
  labels = _labels((2, 8, 8, 8))
  variables = jax.jit(model.init)(jax.random.key(1), mri, labels)
  targets = mrigan_generator.boundaries_from_labels(labels, 4)

  def loss_fn(params):
    (patch, boundary), updates = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, mri,
        labels, train=True, mutable=['batch_stats'])
    loss = jnp.mean(patch**2) + losses.boundary_loss(boundary, targets)
    # One-hot tissues must give the same output as integer labels.
    patch_one_hot = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, mri,
        jax.nn.one_hot(labels, 4), train=True, mutable=['batch_stats'])[0][0]
    return loss, (patch, patch_one_hot, updates)

  (loss, (patch, patch_one_hot, updates)), grads = jax.jit(jax.value_and_grad(
      loss_fn, has_aux=True))(variables['params'])
  assert np.isfinite(loss) and np.all(np.abs(patch) <= 1)
  assert 'batch_stats' in updates
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  # The tissue encoder is trained through the GT-layers and the boundary net.
  assert any(np.any(g != 0) for g in
             jax.tree_util.tree_leaves(grads['tissue_encoder']))
  np.testing.assert_allclose(patch_one_hot, patch, rtol=1e-5, atol=1e-6)


def test_mrigan_generator_errors():
  mri = jnp.zeros((1, 8, 8, 8, 1))
  model = mrigan_generator.MRIGANGenerator(out_channels=1, **_TINY)
  with pytest.raises(ValueError, match='needs tissues'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), mri))
  no_code = mrigan_generator.MRIGANGenerator(
      out_channels=1, use_tissue_encoder=False, **_TINY)
  with pytest.raises(ValueError, match='needs a code'):
    jax.eval_shape(lambda: no_code.init(jax.random.key(0), mri))
  with pytest.raises(ValueError, match='noise_dim'):
    mrigan_generator.MRIGANGenerator(use_mri_encoder=False, **_TINY).init(
        jax.random.key(0), tissues=jnp.zeros((1, 8, 8, 8), jnp.int32))
  with pytest.raises(ValueError, match='fusion'):
    jax.eval_shape(lambda: mrigan_generator.MRIGANGenerator(
        fusion='add', **_TINY).init(
            jax.random.key(0), mri, jnp.zeros((1, 8, 8, 8), jnp.int32)))
  with pytest.raises(ValueError, match="tissue_code='spade'"):
    jax.eval_shape(lambda: mrigan_generator.MRIGANGenerator(
        tissue_code='spade', fusion='concat', **_TINY).init(
            jax.random.key(0), mri, jnp.zeros((1, 8, 8, 8), jnp.int32)))
