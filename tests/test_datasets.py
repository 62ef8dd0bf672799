"""Configured 2D datasets: the phantom, the Kaggle detection set, bad input."""
import os
import shutil

import numpy as np
import pytest

from configs import dcgan as dcgan_config
from conftest import shared_data
from mrseg.data import datasets


def _data_config(**overrides):
  data = dcgan_config.get_config().data
  data.update(overrides)
  return data


def test_phantom_is_the_default_and_deterministic():
  data = _data_config(num_examples=6, image_size=32)
  assert dcgan_config.get_config().data.name == 'phantom2d'
  a, b = datasets.load_2d(data), datasets.load_2d(data)
  assert a['image'].shape == (6, 32, 32, 1) and a['image'].dtype == np.float32
  np.testing.assert_array_equal(a['image'], b['image'])
  assert 0 <= a['image'].min() and a['image'].max() <= 1
  assert a['mask'].reshape(6, -1).max(axis=1).min() == 1  # every slice has a tumour


def test_kaggle_detection_yes_images_as_the_paper_uses(tmp_path):
  root = shared_data('brain_tumor_detection')
  data = _data_config(name='brain_tumor_detection', manual_dir=str(root),
                      data_dir=str(tmp_path / 'tfds'))
  images = datasets.load_2d(data)['image']
  assert images.shape == (155, 128, 128, 1)  # the paper's 155 'yes' slices
  assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
  assert images.std() > 0.1
  both = datasets.load_2d(_data_config(
      name='brain_tumor_detection', manual_dir=str(root), labels=('yes', 'no'),
      data_dir=str(tmp_path / 'tfds'), resize='pad', image_size=64))['image']
  assert both.shape == (253, 64, 64, 1)


def test_detection_without_manual_dir_says_what_to_set():
  with pytest.raises(ValueError, match='manual_dir'):
    datasets.load_2d(_data_config(name='brain_tumor_detection'))


def test_detection_with_unknown_label_fails(tmp_path):
  root = shared_data('brain_tumor_detection')
  with pytest.raises(ValueError, match='maybe'):
    datasets.load_2d(_data_config(
        name='brain_tumor_detection', manual_dir=str(root), labels=('maybe',),
        data_dir=str(tmp_path / 'tfds')))


def test_empty_folder_and_corrupt_jpeg_are_named(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='empty'):
    datasets.load_2d(_data_config(name='brain_tumor_detection',
                                  manual_dir=str(empty),
                                  data_dir=str(tmp_path / 'tfds1')))
  root = shared_data('brain_tumor_detection')
  broken = tmp_path / 'broken'
  for sub in ('yes', 'no'):
    (broken / sub).mkdir(parents=True)
    for name in sorted(os.listdir(root / sub))[:3]:
      shutil.copy(root / sub / name, broken / sub / name)
  (broken / 'yes' / 'Y999.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
  with pytest.raises(ValueError, match='Y999.jpg'):
    datasets.load_2d(_data_config(name='brain_tumor_detection',
                                  manual_dir=str(broken),
                                  data_dir=str(tmp_path / 'tfds2')))


def test_unknown_dataset_name_lists_the_choices():
  with pytest.raises(ValueError, match='phantom2d'):
    datasets.load_2d(_data_config(name='mnist'))


def test_gan_training_pairs_are_the_segmentation_train_split(tmp_path):
  """A joint GAN on Kaggle pairs reads exactly data.train_ids (a '1-300'
  selection string, as the pipeline passes it), in id order, with masks."""
  root = shared_data('brain_tumor_segmentation')
  data = _data_config(name='brain_tumor_segmentation', manual_dir=str(root),
                      data_dir=str(tmp_path / 'tfds'), image_size=32)
  data.train_ids = '3-7,10'
  pairs = datasets.load_2d(data)
  split = datasets.load_2d_split(data, 'train')
  assert pairs['image'].shape == (6, 32, 32, 1)
  assert split['id'].tolist() == [3, 4, 5, 6, 7, 10]
  np.testing.assert_array_equal(pairs['image'], split['image'])
  np.testing.assert_array_equal(pairs['mask'], split['mask'])
  assert set(np.unique(pairs['mask'])) <= {0, 1}
