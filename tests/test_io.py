"""Tests for mrseg.data.io: robust reading of images, masks and volumes."""
import pathlib

import nibabel as nib
import numpy as np
from PIL import Image
import pytest

from mrseg.data import io


def _save(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return path


def _nifti(path: pathlib.Path, data: np.ndarray, affine=None) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
  return path


def test_read_image_grey_png_is_exact(tmp_path):
  grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
  out = io.read_image(_save(tmp_path / 'a.png', grey))
  assert out.dtype == np.uint8 and out.shape == (12, 7)
  np.testing.assert_array_equal(out, grey)


def test_read_image_rgb_uses_pil_luma(tmp_path):
  rgb = np.zeros((4, 5, 3), np.uint8)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
  out = io.read_image(_save(tmp_path / 'a.png', rgb))
  # ITU-R 601-2: L = R * 299/1000 + G * 587/1000 + B * 114/1000.
  assert out.shape == (4, 5)
  np.testing.assert_array_equal(out, np.full((4, 5), 124, np.uint8))


def test_read_image_rgba_drops_alpha(tmp_path):
  rgba = np.full((3, 3, 4), 90, np.uint8)
  rgba[..., 3] = 0  # Fully transparent: the grey value is still 90.
  out = io.read_image(_save(tmp_path / 'a.png', rgba))
  np.testing.assert_array_equal(out, np.full((3, 3), 90, np.uint8))


def test_read_image_applies_exif_orientation(tmp_path):
  grey = np.zeros((2, 6), np.uint8)
  grey[0, 0] = 255
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  path = tmp_path / 'a.jpg'
  Image.fromarray(grey).save(path, exif=exif, quality=100)
  assert io.read_image(path).shape == (6, 2)


@pytest.mark.parametrize(
    'content', [b'', b'not an image at all', b'\x89PNG\r\n\x1a\n broken']
)
def test_read_image_rejects_non_images(tmp_path, content):
  path = tmp_path / 'bad.png'
  path.write_bytes(content)
  with pytest.raises(io.DataError, match='bad.png'):
    io.read_image(path)


def test_read_image_rejects_truncated_jpeg(tmp_path):
  noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
  path = _save(tmp_path / 'Y1.jpg', noise)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(io.DataError, match=r'Y1\.jpg.*truncated'):
    io.read_image(path)


def test_read_image_rejects_16_bit(tmp_path):
  path = tmp_path / 'deep.png'
  Image.fromarray(np.full((4, 4), 4000, np.uint16)).save(path)
  with pytest.raises(io.DataError, match='deep.png.*mode'):
    io.read_image(path)


def test_read_mask_accepts_both_conventions(tmp_path):
  m255 = np.array([[0, 255], [255, 0]], np.uint8)
  m1 = m255 // 255
  expected = m1
  np.testing.assert_array_equal(io.read_mask(_save(tmp_path / 'a.png', m255)),
                                expected)
  np.testing.assert_array_equal(io.read_mask(_save(tmp_path / 'b.png', m1)),
                                expected)


@pytest.mark.parametrize('values', [(0, 128), (0, 1, 255), (3,)])
def test_read_mask_rejects_non_binary(tmp_path, values):
  mask = np.array([values], np.uint8)
  path = _save(tmp_path / 'm.png', mask)
  with pytest.raises(io.DataError, match='m.png.*mask values'):
    io.read_mask(path)


def test_encode_png_round_trips(tmp_path):
  image = np.random.default_rng(1).integers(0, 256, (5, 9), np.uint8)
  path = tmp_path / 'x.png'
  path.write_bytes(io.encode_png(image[..., None]))
  np.testing.assert_array_equal(io.read_image(path), image)


def test_require_dir(tmp_path):
  with pytest.raises(io.DataError, match='(?s)does not exist.*LAYOUT'):
    io.require_dir(tmp_path / 'nope', layout='LAYOUT')
  with pytest.raises(io.DataError, match='(?s)is empty.*LAYOUT'):
    io.require_dir(tmp_path, layout='LAYOUT')
  (tmp_path / 'f').write_text('x')
  assert io.require_dir(tmp_path, layout='') == tmp_path.resolve()


def test_find_layout_root(tmp_path):
  (tmp_path / 'archive' / 'yes').mkdir(parents=True)
  (tmp_path / 'archive' / 'no').mkdir()
  assert io.find_layout_root(tmp_path, ('yes', 'no'), layout='') == (
      tmp_path / 'archive'
  )
  (tmp_path / 'copy' / 'yes').mkdir(parents=True)
  (tmp_path / 'copy' / 'no').mkdir()
  with pytest.raises(io.DataError, match='Several folders'):
    io.find_layout_root(tmp_path, ('yes', 'no'), layout='')
  (tmp_path / 'yes').mkdir()
  (tmp_path / 'no').mkdir()
  assert io.find_layout_root(tmp_path, ('yes', 'no'), layout='') == tmp_path


def test_natural_key_orders_numbers_by_value():
  names = ['Y10.jpg', 'Y2.jpg', 'Y1.jpg', '10 no.jpg', '2 no.jpeg']
  assert sorted(names, key=io.natural_key) == [
      '2 no.jpeg', '10 no.jpg', 'Y1.jpg', 'Y2.jpg', 'Y10.jpg'
  ]


def test_read_volume_nifti_and_analyze(tmp_path):
  data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
  affine = np.diag([1.5, 1.0, 2.0, 1.0])
  volume = io.read_volume(_nifti(tmp_path / 'a.nii.gz', data, affine))
  assert volume.data.dtype == np.float32
  np.testing.assert_array_equal(volume.data, data)
  np.testing.assert_array_equal(volume.affine, affine)
  nib.save(nib.AnalyzeImage(data, affine), tmp_path / 'b.hdr')
  np.testing.assert_array_equal(io.read_volume(tmp_path / 'b.hdr').data, data)


def test_read_volume_squeezes_trailing_singleton(tmp_path):
  volume = io.read_volume(_nifti(tmp_path / 'a.nii', np.zeros((2, 3, 4, 1))))
  assert volume.data.shape == (2, 3, 4)
  with pytest.raises(io.DataError, match=r'a4\.nii.*3D'):
    io.read_volume(_nifti(tmp_path / 'a4.nii', np.zeros((2, 3, 4, 2))))


def test_read_volume_rejects_nan_and_inf(tmp_path):
  data = np.zeros((2, 2, 2), np.float32)
  data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
  with pytest.raises(io.DataError, match=r'nan\.nii.*2 voxels are NaN'):
    io.read_volume(_nifti(tmp_path / 'nan.nii', data))


def test_read_volume_rejects_truncated_and_missing(tmp_path):
  path = _nifti(tmp_path / 't.nii', np.ones((8, 8, 8), np.float32))
  path.write_bytes(path.read_bytes()[:600])
  with pytest.raises(io.DataError, match=r't\.nii'):
    io.read_volume(path)
  gz = _nifti(tmp_path / 't.nii.gz', np.ones((8, 8, 8), np.float32))
  gz.write_bytes(gz.read_bytes()[:60])
  with pytest.raises(io.DataError, match=r't\.nii\.gz'):
    io.read_volume(gz)
  nib.save(nib.AnalyzeImage(np.ones((2, 2, 2), np.int16), np.eye(4)),
           tmp_path / 's.hdr')
  (tmp_path / 's.img').unlink()
  with pytest.raises(io.DataError, match=r's\.img is missing'):
    io.read_volume(tmp_path / 's.hdr')
  (tmp_path / 'junk.nii').write_text('junk')
  with pytest.raises(io.DataError, match=r'junk\.nii'):
    io.read_volume(tmp_path / 'junk.nii')


def test_read_label_volume_rejects_fractions(tmp_path):
  data = np.array([0, 1, 2.5, 3], np.float32).reshape(1, 1, 4)
  with pytest.raises(io.DataError, match=r'l\.nii.*non-integer.*2\.5'):
    io.read_label_volume(_nifti(tmp_path / 'l.nii', data))


def test_remap_labels():
  labels = np.array([[0, 10], [150, 250]])
  out = io.remap_labels(labels, {0: 0, 10: 1, 150: 2, 250: 3}, 'x')
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, [[0, 1], [2, 3]])
  with pytest.raises(io.DataError, match=r'lab\.img.*unexpected.*\[7\]'):
    io.remap_labels(np.array([0, 7, 10]), {0: 0, 10: 1}, 'lab.img')


def test_check_same_grid():
  a = io.Volume(np.zeros((2, 2, 2)), np.eye(4))
  io.check_same_grid({'a': a, 'b': io.Volume(np.ones((2, 2, 2)), np.eye(4))})
  with pytest.raises(io.DataError, match='b has shape'):
    io.check_same_grid({'a': a, 'b': io.Volume(np.zeros((2, 2, 3)), np.eye(4))})
  with pytest.raises(io.DataError, match='different affines'):
    io.check_same_grid(
        {'a': a, 'b': io.Volume(np.zeros((2, 2, 2)), np.diag([2, 1, 1, 1]))}
    )
