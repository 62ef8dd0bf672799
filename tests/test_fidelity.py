"""Fidelity metrics against closed forms and independent numpy/scipy code."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from mrseg import fid_kid
from mrseg import fidelity
from mrseg import similarity
from mrseg.models import unet


def _smooth_images(rng, shape, sigma=2.0):
  """Random images in [0, 1] with structure at several scales."""
  noise = rng.random(shape)
  sigmas = (0,) + (sigma,) * (len(shape) - 1) if len(shape) > 2 else sigma
  smooth = ndimage.gaussian_filter(noise, sigmas)
  smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
  return 0.8 * smooth + 0.2 * noise


# ----------------------------------------------------------------------------
# Existing intensity metrics (behaviour unchanged).


def test_intensity_metrics_on_identical_and_shifted_sets():
  rng = np.random.default_rng(0)
  x = rng.random((4, 16, 16))
  assert fidelity.intensity_wasserstein(x, x) == 0.0
  assert fidelity.histogram_intersection(x, x) == pytest.approx(1.0)
  # Shifting every intensity by 0.1 moves every quantile by 0.1.
  assert fidelity.intensity_wasserstein(x * 0.5, x * 0.5 + 0.1) == (
      pytest.approx(0.1))


# ----------------------------------------------------------------------------
# FID.


def _reference_fid(a, b):
  """FID by eigendecompositions: Tr sqrt(S1 S2) = Tr sqrt(S1^.5 S2 S1^.5).

  sqrt(S1) S2 sqrt(S1) is symmetric PSD and similar to S1 S2, so the trace of
  the root is the sum of the square roots of its eigenvalues; no sqrtm.
  """
  mu1, mu2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
  return (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))


def test_fid_of_identical_features_is_zero():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(200, 16)) * 3.0 + 1.0
  assert abs(fid_kid.fid(features, features)) < 1e-8
  # Fewer samples than dimensions: singular covariance, still ~0.
  features = rng.normal(size=(20, 64))
  assert abs(fid_kid.fid(features, features)) < 1e-4


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  var1, var2 = rng.uniform(0.1, 4, 8), rng.uniform(0.1, 4, 8)
  # For commuting (diagonal) covariances the trace term is
  # sum (sqrt(v1) - sqrt(v2))^2.
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(
      (np.sqrt(var1) - np.sqrt(var2)) ** 2)
  got = fid_kid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  assert got == pytest.approx(expected, rel=1e-12)
  # One dimension, by hand: (0 - 1)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2.
  assert fid_kid.frechet_distance(0.0, 1.0, 1.0, 4.0) == pytest.approx(2.0)


@pytest.mark.parametrize('n, d', [(300, 12), (40, 32)])
def test_fid_matches_eigendecomposition_reference(n, d):
  rng = np.random.default_rng(d)
  mix1, mix2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  a = rng.normal(size=(n, d)) @ mix1
  b = rng.normal(size=(n + 17, d)) @ mix2 + 0.5
  np.testing.assert_allclose(fid_kid.fid(a, b), _reference_fid(a, b),
                             rtol=1e-7)


def test_fid_approaches_population_value_with_many_samples():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(20000, 3))
  b = rng.normal(size=(20000, 3)) * 2.0 + 1.0
  # Population value: 3 * 1^2 + 3 * (1 - 2)^2 = 6.
  assert fid_kid.fid(a, b) == pytest.approx(6.0, rel=0.03)


def test_frechet_distance_falls_back_to_an_offset(monkeypatch):
  # Schur's method fails on some singular products; simulate a first failure.
  sqrtm = fid_kid.scipy.linalg.sqrtm
  calls = []

  def failing_once(matrix):
    calls.append(matrix)
    return matrix * np.nan if len(calls) == 1 else sqrtm(matrix)

  monkeypatch.setattr(fid_kid.scipy.linalg, 'sqrtm', failing_once)
  s1, s2, eps = np.diag([1.0, 4.0]), np.diag([9.0, 0.0]), 1e-3
  got = fid_kid.frechet_distance(np.zeros(2), s1, np.ones(2), s2, eps=eps)
  assert len(calls) == 2
  np.testing.assert_allclose(calls[1], (s1 + eps * np.eye(2)) @ (
      s2 + eps * np.eye(2)))
  # Traces of the unshifted covariances, root of the shifted product.
  expected = 2 + (1 + 4) + 9 - 2 * (
      np.sqrt(1.001 * 9.001) + np.sqrt(4.001 * 1e-3))
  assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_rejects_bad_inputs():
  with pytest.raises(ValueError, match='positive semi-definite'):
    # Not a covariance: sqrt(diag(1, -1)) is complex.
    fid_kid.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2),
                              np.eye(2))
  with pytest.raises(ValueError, match='of one D'):
    fid_kid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='NaN'):
    fid_kid.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2),
                              np.eye(2))
  with pytest.raises(ValueError, match='different dimension'):
    fid_kid.fid(np.ones((5, 2)), np.ones((5, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    fid_kid.fid(np.ones((1, 2)), np.ones((5, 2)))
  with pytest.raises(ValueError, match=r'\[N, D\]'):
    fid_kid.fid(np.ones(5), np.ones(5))


# ----------------------------------------------------------------------------
# KID.


def _brute_force_mmd2(x, y):
  """Unbiased MMD^2 with the cubic kernel, one pair at a time."""
  d = x.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def test_kid_matches_brute_force_on_a_tiny_set():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)) + 0.3
  # Subsets larger than both sets are the whole sets (in some order, which
  # MMD does not see), so there is no spread.
  score = fid_kid.kid(x, y, num_subsets=3, subset_size=100)
  assert score.mean == pytest.approx(_brute_force_mmd2(x, y), rel=1e-12)
  assert score.std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_average_to_the_full_set_u_statistic():
  # A U-statistic on a random subset is unbiased for the U-statistic of the
  # whole set, so many subsets average to the full-set value.
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(24, 4)), rng.normal(size=(24, 4)) * 1.5 + 0.5
  full = _brute_force_mmd2(x, y)
  score = fid_kid.kid(x, y, num_subsets=3000, subset_size=8, seed=3)
  assert score.std > 0
  assert abs(score.mean - full) < 4 * score.std / np.sqrt(3000)


def test_kid_near_zero_for_one_distribution_and_positive_when_shifted():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
  same = fid_kid.kid(a, b, num_subsets=20, subset_size=200)
  shifted = fid_kid.kid(a, b + 0.5, num_subsets=20, subset_size=200)
  assert abs(same.mean) < 3 * same.std + 1e-3
  assert shifted.mean > 10 * max(shifted.std, abs(same.mean))
  # Deterministic for a seed.
  assert fid_kid.kid(a, b, 5, 50, seed=7) == fid_kid.kid(a, b, 5, 50, seed=7)


def test_kid_rejects_bad_settings():
  x = np.ones((5, 2))
  with pytest.raises(ValueError, match='subset_size >= 2'):
    fid_kid.kid(x, x, subset_size=1)
  with pytest.raises(ValueError, match='different dimension'):
    fid_kid.kid(x, np.ones((5, 3)))


# ----------------------------------------------------------------------------
# Feature extractor.


def test_make_feature_fn_pools_and_batches():
  w = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
  apply_fn = lambda variables, x: jnp.tanh(x @ variables['w'])
  images = np.random.default_rng(1).normal(size=(7, 5, 4, 2)).astype(
      np.float32)
  maps = np.tanh(images.astype(np.float64) @ w)
  avg = fidelity.make_feature_fn(apply_fn, {'w': w}, batch_size=3)(images)
  assert avg.shape == (7, 3) and avg.dtype == np.float64
  np.testing.assert_allclose(avg, maps.mean((1, 2)), rtol=1e-5, atol=1e-6)
  both = fidelity.make_feature_fn(apply_fn, {'w': w}, batch_size=64,
                                  pooling='avg_max')(images)
  np.testing.assert_allclose(
      both, np.concatenate([maps.mean((1, 2)), maps.max((1, 2))], -1),
      rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='Unsupported pooling'):
    fidelity.make_feature_fn(apply_fn, {'w': w}, pooling='sum')
  with pytest.raises(ValueError, match='non-empty'):
    fidelity.make_feature_fn(apply_fn, {'w': w})(images[:0])


def test_unet_encoder_features():
  model = unet.UNet(depth=1, base_features=4)
  images = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])
  encode = functools.partial(model.apply, method=unet.UNet.encode)
  features = fidelity.make_feature_fn(encode, variables, batch_size=2)(images)
  assert features.shape == (5, 8)  # 4 * 2**1 bottleneck channels.
  expected = jax.jit(encode)(variables, images)
  np.testing.assert_allclose(features, np.asarray(expected).mean((1, 2)),
                             rtol=1e-5, atol=1e-6)
  assert abs(fid_kid.fid(features, features)) < 1e-4


# ----------------------------------------------------------------------------
# SSIM and MS-SSIM.


def _reference_ssim(x, y, max_val=1.0, size=11, sigma=1.5):
  """SSIM of two [H, W] images with scipy's Gaussian filter, 'valid' part.

  Written from Wang et al. 2004 (Gaussian-weighted population statistics);
  scipy's truncated kernel has radius `truncate * sigma` rounded.
  """
  radius = (size - 1) // 2
  blur = lambda a: ndimage.gaussian_filter(a, sigma, truncate=radius / sigma)
  c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
  mx, my = blur(x), blur(y)
  vx, vy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2
  cxy = blur(x * y) - mx * my
  s = ((2 * mx * my + c1) * (2 * cxy + c2)
       / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return s[radius:-radius, radius:-radius].mean()


@pytest.mark.parametrize('size', [7, 11])
def test_ssim_matches_scipy_reference(size):
  rng = np.random.default_rng(size)
  x = _smooth_images(rng, (40, 36))
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
  got = similarity.ssim(x, y, filter_size=size)
  assert isinstance(got, float)
  assert got == pytest.approx(_reference_ssim(x, y, size=size), rel=1e-10)
  # One scale of MS-SSIM is SSIM.
  assert similarity.ms_ssim(x, y, power_factors=(1.0,), filter_size=size) == (
      pytest.approx(got, rel=1e-12))


@pytest.mark.parametrize('size', [64, 128])
def test_ms_ssim_identity_symmetry_and_noise(size):
  rng = np.random.default_rng(size)
  x = _smooth_images(rng, (size, size))
  assert similarity.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
  noise = rng.normal(size=x.shape)
  values = [similarity.ms_ssim(x, np.clip(x + s * noise, 0, 1))
            for s in (0.02, 0.05, 0.1, 0.3)]
  assert all(a > b for a, b in zip(values, values[1:])), values
  assert 0.0 <= values[-1] < values[0] < 1.0
  y = np.clip(x + 0.1 * noise, 0, 1)
  assert similarity.ms_ssim(x, y) == similarity.ms_ssim(y, x)


def test_ms_ssim_batches_and_accepts_jax_arrays():
  rng = np.random.default_rng(3)
  x = _smooth_images(rng, (3, 64, 64))
  y = np.clip(x + 0.05 * rng.normal(size=x.shape), 0, 1)
  batched = similarity.ms_ssim(x[..., None], y[..., None])
  assert batched.shape == (3,)
  np.testing.assert_allclose(
      batched, [similarity.ms_ssim(a, b) for a, b in zip(x, y)], rtol=1e-12)
  np.testing.assert_allclose(similarity.ms_ssim(x, y), batched, rtol=1e-12)
  # jax arrays are float32 by default, hence the looser tolerance.
  np.testing.assert_allclose(
      similarity.ms_ssim(jnp.asarray(x), jnp.asarray(y)), batched, rtol=1e-6)


def test_ms_ssim_rejects_small_and_malformed_images():
  rng = np.random.default_rng(4)
  small = rng.random((32, 32))
  with pytest.raises(ValueError, match='at least 49 px'):
    similarity.ms_ssim(small, small)
  # The standard 5 scales with an 11-px window do not fit 128 px.
  big = rng.random((128, 128))
  with pytest.raises(ValueError, match='at least 161 px'):
    similarity.ms_ssim(big, big, power_factors=similarity.MS_SSIM_WEIGHTS_5,
                     filter_size=11)
  with pytest.raises(ValueError, match='one shape'):
    similarity.ms_ssim(big, big[:64])
  with pytest.raises(ValueError, match='greyscale'):
    similarity.ms_ssim(np.ones((1, 64, 64, 3)), np.ones((1, 64, 64, 3)))
  with pytest.raises(ValueError, match='NaN'):
    similarity.ms_ssim(big * np.nan, big)


def test_ms_ssim_weights_are_renormalised():
  weights = similarity.ms_ssim_weights(4)
  assert sum(weights) == pytest.approx(1.0)
  np.testing.assert_allclose(
      np.array(weights) / weights[0],
      np.array(similarity.MS_SSIM_WEIGHTS_5[:4]) / 0.0448)


def test_ms_ssim_matches_tensorflow():
  tf = pytest.importorskip('tensorflow')
  rng = np.random.default_rng(5)
  # 100 px: odd sizes (25 px) at the coarsest scale exercise the padding.
  x = _smooth_images(rng, (2, 100, 100))
  y = np.clip(x + 0.05 * rng.normal(size=x.shape), 0, 1)
  weights = similarity.ms_ssim_weights(4)
  expected = tf.image.ssim_multiscale(
      x[..., None].astype(np.float32), y[..., None].astype(np.float32), 1.0,
      power_factors=weights, filter_size=7).numpy()
  np.testing.assert_allclose(similarity.ms_ssim(x, y), expected, rtol=1e-4)


# ----------------------------------------------------------------------------
# MS-SSIM diversity and the report.


def test_pair_indices_enumerate_the_upper_triangle():
  pairs = {similarity._pair_indices(k) for k in range(45)}
  assert pairs == {(i, j) for j in range(10) for i in range(j)}


def test_ms_ssim_diversity():
  rng = np.random.default_rng(6)
  images = _smooth_images(rng, (6, 64, 64))
  # 15 pairs in all: num_pairs >= 15 uses each once, whatever the seed.
  expected = np.mean([similarity.ms_ssim(images[i], images[j])
                      for i in range(6) for j in range(i + 1, 6)])
  assert similarity.ms_ssim_diversity(images, 100, seed=1) == pytest.approx(
      expected, rel=1e-12)
  assert similarity.ms_ssim_diversity(images[..., None], 15, seed=2) == (
      pytest.approx(expected, rel=1e-12))
  # A collapsed set (copies of one image plus a little noise) scores higher.
  collapsed = np.clip(images[:1] + 0.02 * rng.normal(size=images.shape), 0, 1)
  assert similarity.ms_ssim_diversity(collapsed, 10) > expected + 0.3
  assert similarity.ms_ssim_diversity(np.repeat(images[:1], 3, 0), 3) == (
      pytest.approx(1.0))
  with pytest.raises(ValueError, match='at least 2 images'):
    similarity.ms_ssim_diversity(images[:1], 10)


def test_fidelity_report():
  rng = np.random.default_rng(7)
  real = _smooth_images(rng, (12, 64, 64))[..., None]
  fake = np.clip(real[::-1] + 0.1 * rng.normal(size=real.shape), 0, 1)
  # A stand-in feature network: 8x8 average pooling, flattened.
  def feature_fn(x):
    return x[..., 0].reshape(len(x), 8, 8, 8, 8).mean((2, 4)).reshape(
        len(x), -1)

  report = fidelity.fidelity_report(real, fake, feature_fn=feature_fn,
                                    num_pairs=20, kid_subsets=5,
                                    kid_subset_size=10)
  assert set(report) == {
      'intensity_wasserstein', 'histogram_intersection', 'num_real',
      'num_fake', 'ms_ssim_diversity_fake', 'ms_ssim_diversity_real',
      'ms_ssim_num_scales', 'fid', 'kid_mean', 'kid_std'}
  assert report['ms_ssim_num_scales'] == 4
  assert all(np.isfinite(v) for v in report.values())
  same = fidelity.fidelity_report(real, real, feature_fn=feature_fn,
                                  num_pairs=20)
  assert same['intensity_wasserstein'] == 0.0
  assert same['histogram_intersection'] == pytest.approx(1.0)
  # Standardised features: FID is in units of the mean real-feature
  # variance (trace ~64 over 64 dimensions); the rank-deficient sqrtm of 12
  # samples leaves ~1e-6.
  assert abs(same['fid']) < 1e-5
  assert same['ms_ssim_diversity_fake'] == same['ms_ssim_diversity_real']
  # Small images fall back to the scales that fit; no feature_fn, no FID.
  small = fidelity.fidelity_report(real[:, :32, :32], fake[:, :32, :32],
                                   num_pairs=5)
  assert small['ms_ssim_num_scales'] == 3 and 'fid' not in small
  with pytest.raises(ValueError, match='image channel'):
    fidelity.fidelity_report(np.ones((3, 8, 8, 2)), np.ones((3, 8, 8, 2)))


def test_fidelity_report_standardizes_feature_scale():
  """A feature network's arbitrary scale must not change FID/KID."""
  rng = np.random.default_rng(8)
  real = _smooth_images(rng, (12, 32, 32))[..., None]
  fake = np.clip(real[::-1] + 0.2 * rng.normal(size=real.shape), 0, 1)

  def feature_fn(x, scale=1.0):
    pooled = x[..., 0].reshape(len(x), 4, 8, 4, 8).mean((2, 4))
    # A constant dimension, as a dead ReLU channel gives.
    return np.concatenate([scale * pooled.reshape(len(x), -1),
                           np.full((len(x), 1), 3.0)], axis=1)

  def scores(scale, standardize):
    report = fidelity.fidelity_report(
        real, fake, feature_fn=lambda x: feature_fn(x, scale), num_pairs=5,
        kid_subsets=5, kid_subset_size=10, standardize_features=standardize)
    return report['fid'], report['kid_mean']

  fid1, kid1 = scores(1.0, True)
  fid1000, kid1000 = scores(1000.0, True)
  assert fid1 > 0 and fid1000 == pytest.approx(fid1, rel=1e-6)
  assert kid1000 == pytest.approx(kid1, rel=1e-6)
  raw1, _ = scores(1.0, False)
  raw1000, _ = scores(1000.0, False)
  assert raw1000 == pytest.approx(1e6 * raw1, rel=1e-6)
  with pytest.raises(ValueError, match='constant'):
    fidelity.fidelity_report(real, fake, feature_fn=lambda x: np.ones((len(x), 3)),
                             num_pairs=5)


def test_standardized_fid_ignores_a_nearly_constant_dimension():
  """One dimension almost constant over the real images (a nearly dead
  channel) must not dominate: the scale is shared by all dimensions."""
  rng = np.random.default_rng(9)
  real = rng.normal(size=(200, 8))
  fake = rng.normal(size=(200, 8)) + 0.5  # every dimension shifted by 0.5
  real[:, 0] = 1e-9 * rng.normal(size=200)
  fake[:, 0] = 1.0  # far off in units of that dimension's own spread
  real_std, fake_std = fidelity._standardize(real, fake)  # pylint: disable=protected-access
  score = fid_kid.fid(real_std, fake_std)
  # ~7 shifted unit dimensions plus one at distance ~1.07 in the shared scale.
  assert 1.0 < score < 10.0
