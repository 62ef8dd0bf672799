"""Sliding-window inference tests (and the NIfTI writer of mrseg.eval)."""
import jax
import nibabel as nib
import numpy as np
import pytest

from mrseg.eval import io
from mrseg.eval import sliding_window as sw
from mrseg.models.unet import UNet


class PointwiseModel:
  """A translation-equivariant 'model': per-voxel logits = x @ w + b.

  Records the batch shapes it sees, to check that windows arrive in batches
  of a fixed shape.
  """

  def __init__(self, in_channels: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.w = rng.normal(size=(in_channels, num_classes)).astype(np.float32)
    self.b = rng.normal(size=(num_classes,)).astype(np.float32)
    self.shapes = []

  def __call__(self, x):
    self.shapes.append(x.shape)
    return np.asarray(x, np.float32) @ self.w + self.b

  def probabilities(self, image):
    return np.asarray(jax.nn.softmax(self(image), axis=-1))


@pytest.mark.parametrize('window_starts_case', [
    (10, 10, 0.5), (11, 4, 0.5), (37, 16, 0.5), (37, 16, 0.0), (100, 7, 0.9),
    (16, 16, 0.25), (17, 16, 0.5)])
def test_window_starts_cover_axis_exactly(window_starts_case):
  size, window, overlap = window_starts_case
  starts = sw.window_starts(size, window, overlap)
  assert starts[0] == 0 and starts[-1] == size - window
  steps = np.diff(starts)
  assert np.all(steps > 0)
  # Neighbours overlap by at least the requested fraction (up to rounding).
  assert np.all(steps <= window * (1 - overlap) + 0.5)
  covered = np.zeros(size, bool)
  for s in starts:
    covered[s:s + window] = True
  assert covered.all()


def test_gaussian_weights():
  weights = sw.importance_weights((17, 9), 'gaussian')
  assert weights.shape == (17, 9)
  assert weights[8, 4] == weights.max() == 1.0
  np.testing.assert_allclose(weights, weights[::-1, ::-1])
  # sigma = 17/8 along axis 0: one sigma from the centre the weight is e^-1/2.
  np.testing.assert_allclose(
      np.interp(8 + 17 / 8, np.arange(17), weights[:, 4]), np.exp(-0.5),
      rtol=0.02)
  assert weights.min() > 0
  np.testing.assert_array_equal(sw.importance_weights((3, 3), 'constant'), 1)
  with pytest.raises(ValueError, match='weighting'):
    sw.importance_weights((3, 3), 'linear')


def test_window_equal_to_image_matches_whole_image_unet():
  model = UNet(num_classes=3, depth=2, base_features=4)
  image = jax.random.normal(jax.random.key(0), (16, 16, 2))
  variables = model.init(jax.random.key(1), image[None])
  predict = jax.jit(lambda x: model.apply(variables, x))
  probs = sw.sliding_window_inference(predict, image, (16, 16), batch_size=2)
  expected = jax.nn.softmax(predict(image[None])[0], axis=-1)
  assert probs.shape == (16, 16, 3) and probs.dtype == np.float32
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('weighting', ['gaussian', 'constant'])
@pytest.mark.parametrize('overlap', [0.0, 0.5, 0.75])
def test_translation_equivariant_model_matches_whole_image_2d(weighting,
                                                              overlap):
  model = PointwiseModel(in_channels=2, num_classes=4)
  image = np.random.default_rng(1).normal(size=(37, 29, 2)).astype(np.float32)
  probs = sw.sliding_window_inference(model, image, (16, 8), overlap=overlap,
                                      weighting=weighting, batch_size=3)
  assert probs.shape == (37, 29, 4)
  # Every voxel covered (an uncovered one would be 0/0 = NaN) and averaged
  # correctly: all windows agree, so the average equals the whole image.
  np.testing.assert_allclose(probs, model.probabilities(image), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert set(model.shapes[:-1]) == {(3, 16, 8, 2)}  # fixed batch shape


def test_3d_with_padding_of_small_axes():
  model = PointwiseModel(in_channels=1, num_classes=3, seed=2)
  image = np.random.default_rng(3).normal(size=(20, 5, 11, 1))
  probs = sw.sliding_window_inference(model, image, (8, 8, 8), batch_size=4)
  assert probs.shape == (20, 5, 11, 3)
  np.testing.assert_allclose(probs, model.probabilities(image), rtol=1e-5,
                             atol=1e-6)
  # The last call is probabilities() on the whole image.
  assert set(model.shapes[:-1]) == {(4, 8, 8, 8, 1)}


def test_small_2d_input_is_padded_and_cropped():
  model = PointwiseModel(in_channels=1, num_classes=2, seed=4)
  image = np.random.default_rng(5).normal(size=(5, 7, 1))
  probs = sw.sliding_window_inference(model, image, (8, 8), batch_size=1)
  assert probs.shape == (5, 7, 2)
  assert model.shapes[0] == (1, 8, 8, 1)
  np.testing.assert_allclose(probs, model.probabilities(image), rtol=1e-5,
                             atol=1e-6)


def test_probabilities_are_averaged_not_labels():
  # Windows that disagree: the output is the weighted mean of their
  # probabilities (constant weights -> plain mean), not a vote.
  calls = []

  def predict(x):
    calls.append(len(calls))
    p = 0.9 if len(calls) == 1 else 0.2
    return np.broadcast_to(np.array([1 - p, p], np.float32),
                           x.shape[:-1] + (2,))

  image = np.zeros((12, 1), np.float32)
  probs = sw.sliding_window_inference(predict, image, (8,), overlap=0.5,
                                      weighting='constant', batch_size=1,
                                      apply_softmax=False)
  # Windows start at 0 and 4: voxels 0-3 only window 1, 8-11 only window 2,
  # 4-7 both.
  np.testing.assert_allclose(probs[:4, 1], 0.9)
  np.testing.assert_allclose(probs[4:8, 1], 0.55)
  np.testing.assert_allclose(probs[8:, 1], 0.2)


def test_batched_input_and_errors():
  model = PointwiseModel(in_channels=1, num_classes=2)
  images = np.random.default_rng(6).normal(size=(2, 12, 10, 1))
  probs = sw.sliding_window_inference(model, images, (8, 8))
  assert probs.shape == (2, 12, 10, 2)
  np.testing.assert_allclose(probs[1], model.probabilities(images[1]),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='does not match'):
    sw.sliding_window_inference(model, images[0, ..., 0], (8, 8, 8))
  with pytest.raises(ValueError, match='overlap'):
    sw.sliding_window_inference(model, images[0], (8, 8), overlap=1.0)
  with pytest.raises(ValueError, match='predict_fn returned'):
    sw.sliding_window_inference(lambda x: x[:, :4], images[0], (8, 8))


def test_write_nifti_round_trip(tmp_path):
  labels = np.zeros((4, 5, 3), np.int64)
  labels[1:3, 2:4, 1] = 2
  affine = np.diag([1.5, 1.0, 3.0, 1.0])
  affine[:3, 3] = [-10, 5, 2]
  path = io.write_nifti(labels, affine, tmp_path / 'sub' / 'case0.nii.gz')
  image = nib.load(path)
  np.testing.assert_array_equal(np.asarray(image.dataobj), labels)
  assert image.get_data_dtype() == np.uint8
  np.testing.assert_allclose(image.affine, affine)
  with pytest.raises(ValueError, match='integers'):
    io.write_nifti(labels.astype(np.float32), affine, tmp_path / 'x.nii')
