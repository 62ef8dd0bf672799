"""--mode=predict: tiny trained models on real files from ../shared/data."""
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import seg3d as seg3d_config
from configs import unet as unet_config
from mrseg.data import io
from mrseg.data import slices
from mrseg.data import tissue
from mrseg.eval import predict
from mrseg.eval import segmenters
from mrseg.train import mrigan_trainer
from mrseg.train import unet_trainer
from tests.conftest import shared_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Two 512x512 slices, a 256x256 one (a different patient's series).
TUMOUR_IDS = (1, 2, 955)


@pytest.fixture(scope='module')
def unet_run(tmp_path_factory):
  """A 2D UNet trained for 4 steps on the phantom (32x32, tested at 64x64)."""
  config = unet_config.get_config('test')
  config.eval.after_training = False
  workdir = tmp_path_factory.mktemp('unet_run')
  unet_trainer.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope='module')
def seg3d_run(tmp_path_factory):
  """The supervised 3D segmenter, T1 only, 3 steps on the 3 mm phantom."""
  config = seg3d_config.get_config('test')
  config.data.modalities = 't1'
  config.eval.after_training = False
  workdir = tmp_path_factory.mktemp('seg3d_run')
  mrigan_trainer.train_and_evaluate(config, str(workdir))
  return workdir


def _tumour_folder(tmp_path):
  """Real tumour slices of mixed sizes, a non-square crop and a corrupt PNG."""
  images = shared_data('brain_tumor_segmentation', 'images')
  folder = tmp_path / 'scans'
  folder.mkdir()
  for i in TUMOUR_IDS:
    shutil.copy(images / f'{i}.png', folder / f'{i}.png')
  Image.open(images / '3.png').crop((40, 100, 340, 300)).save(
      folder / 'crop.jpg', quality=95)
  (folder / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
  return folder


def _rows(output):
  with open(output / 'predictions.csv', newline='') as f:
    return {pathlib.Path(r['file']).name: r for r in csv.DictReader(f)}


def test_2d_folder_of_real_slices(unet_run, tmp_path):
  folder = _tumour_folder(tmp_path)
  output = tmp_path / 'out'
  summary = predict.run(unet_run, folder, output, pixel_spacing=0.5,
                        progress=False)

  assert [pathlib.Path(f).name for f, _ in summary.failed] == ['corrupt.png']
  assert 'corrupt.png' in summary.failed[0][1]
  rows = _rows(output)
  assert set(rows) == {'1.png', '2.png', '955.png', 'crop.jpg', 'corrupt.png'}
  assert rows['corrupt.png']['status'] == 'error'
  assert 'cannot decode' in rows['corrupt.png']['error']
  for name, row in rows.items():
    if name == 'corrupt.png':
      continue
    assert row['status'] == 'ok'
    assert row['model'] == 'unet'
    assert int(row['checkpoint_step']) == json.loads(
        (unet_run / 'best.json').read_text())['step']
    source = Image.open(folder / name)
    mask = np.asarray(Image.open(output / row['output']))
    overlay = np.asarray(Image.open(output / row['overlay']))
    # The input's own resolution (512, 256, or the 300x200 crop).
    assert mask.shape == source.size[::-1]
    assert overlay.shape == source.size[::-1] + (3,)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    tumour = int(np.count_nonzero(mask == 255))
    assert int(row['tumor_pixels']) == tumour
    assert float(row['tumor_mm2']) == pytest.approx(tumour * 0.25)
  labels = json.loads((output / 'labels.json').read_text())
  assert labels['values'] == {'background': 0, 'tumor': 255}


def test_2d_strict_stops_at_the_bad_file(unet_run, tmp_path):
  folder = _tumour_folder(tmp_path)
  with pytest.raises(io.DataError, match='corrupt.png'):
    predict.run(unet_run, folder, tmp_path / 'out', strict=True,
                progress=False)


def test_2d_model_refuses_a_volume(unet_run, tmp_path):
  volume = tmp_path / 'v.nii.gz'
  nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), volume)
  summary = predict.run(unet_run, volume, tmp_path / 'out', progress=False)
  assert len(summary.failed) == 1
  assert 'v.nii.gz: a 3D volume, but this run is a 2D UNet' in (
      summary.failed[0][1])


@pytest.mark.parametrize('height,width', [(200, 300), (300, 200), (64, 64)])
def test_content_box_matches_resize_with_pad(height, width):
  ones = tf.ones((height, width, 1))
  padded = tf.image.resize_with_pad(ones, 64, 64).numpy()[..., 0] > 0.5
  rows, cols = np.flatnonzero(padded.any(1)), np.flatnonzero(padded.any(0))
  top, left, h, w = segmenters.content_box(height, width, 64, 'pad')
  assert (top, left, h, w) == (rows[0], cols[0], len(rows), len(cols))


def test_3d_nifti_keeps_its_grid(seg3d_run, tmp_path):
  t1 = nib.load(shared_data('tissue_t1', 'subject01_T1.nii.gz'))
  folder = tmp_path / 'volumes'
  folder.mkdir()
  # A 1 mm block around the centre: its affine is shifted, not the identity.
  cropped = t1.slicer[40:120, 50:150, 60:150]
  nib.save(cropped, folder / 'sub01_T1.nii.gz')
  two = nib.Nifti1Image(np.stack([np.asarray(cropped.dataobj)] * 2, -1),
                        cropped.affine)
  nib.save(two, folder / 'two_channels.nii.gz')
  shutil.copy(shared_data('brain_tumor_segmentation', 'images', '1.png'),
              folder / 'slice.png')
  output = tmp_path / 'out'
  summary = predict.run(seg3d_run, folder, output, progress=False)

  failed = dict((pathlib.Path(f).name, m) for f, m in summary.failed)
  assert set(failed) == {'two_channels.nii.gz', 'slice.png'}
  assert '2 channel(s)' in failed['two_channels.nii.gz']
  assert 'not a NIfTI, MGZ or Analyze volume' in failed['slice.png']
  row = _rows(output)['sub01_T1.nii.gz']
  assert row['model'] == 'mrigan/supervised'
  # Trained on the 3 mm phantom: the 1 mm input is block-averaged by 3.
  assert row['model_voxel_factor'] == '3'
  seg = nib.load(output / 'sub01_T1_seg.nii.gz')
  assert seg.shape == cropped.shape
  np.testing.assert_allclose(seg.affine, cropped.affine)
  assert seg.header.get_zooms() == cropped.header.get_zooms()
  assert int(seg.header['sform_code']) == int(cropped.header['sform_code'])
  labels = np.asarray(seg.dataobj)
  assert labels.dtype == np.uint8
  assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
  for c, name in enumerate(('csf', 'gm', 'wm'), start=1):
    count = int(np.count_nonzero(labels == c))
    assert int(row[f'{name}_voxels']) == count
    assert float(row[f'{name}_ml']) == pytest.approx(count / 1000, abs=1e-4)
  overlay = np.asarray(Image.open(output / row['overlay']))
  assert overlay.ndim == 3 and overlay.shape[-1] == 3
  assert json.loads((output / 'labels.json').read_text())['values'] == {
      'background': 0, 'csf': 1, 'gm': 2, 'wm': 3}


def test_3d_restricted_to_the_brain(seg3d_run, tmp_path):
  """A run with eval.restrict_to_brain labels nothing outside the nonzero
  voxels of the input, and inside them what the unrestricted run does."""
  t1 = nib.load(shared_data('tissue_t1', 'subject01_T1.nii.gz'))
  folder = tmp_path / 'volumes'
  folder.mkdir()
  nib.save(t1.slicer[40:120, 50:150, 60:150], folder / 'sub01.nii.gz')
  restricted = tmp_path / 'run'
  shutil.copytree(seg3d_run, restricted)
  config = json.loads((restricted / 'config.json').read_text())
  config['eval']['restrict_to_brain'] = True
  (restricted / 'config.json').write_text(json.dumps(config))
  labels = {}
  for name, run in (('all', seg3d_run), ('brain', restricted)):
    predict.run(run, folder, tmp_path / name, progress=False)
    labels[name] = np.asarray(
        nib.load(tmp_path / name / 'sub01_seg.nii.gz').dataobj)
  brain = np.asarray(nib.load(folder / 'sub01.nii.gz').dataobj) > 0
  assert labels['all'][~brain].any()  # the model labels some of the outside
  np.testing.assert_array_equal(labels['brain'][~brain], 0)
  np.testing.assert_array_equal(labels['brain'][brain], labels['all'][brain])


def _launch(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, str(ROOT / 'launch.py'), *args],
                        cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=600)


def test_launch_predict_reports_the_bad_file_and_writes_the_others(
    unet_run, tmp_path):
  folder = _tumour_folder(tmp_path)
  output = tmp_path / 'out'
  result = _launch(f'--workdir={unet_run}', '--mode=predict',
                   f'--input={folder}', f'--output={output}')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'corrupt.png: cannot decode image' in result.stderr
  assert '1 of 5 file(s) could not be segmented' in result.stderr
  assert (output / '955_mask.png').exists()
  assert (output / 'crop_overlay.png').exists()


def test_launch_predict_without_a_trained_model(tmp_path):
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  (untrained / 'config.json').write_text(
      unet_config.get_config('test').to_json())
  result = _launch(f'--workdir={untrained}', '--mode=predict',
                   f'--input={tmp_path}', f'--output={tmp_path / "o"}')
  assert result.returncode == 1
  assert f'{untrained} has no trained model' in result.stderr
  result = _launch(f'--workdir={tmp_path / "nothing"}', '--mode=predict',
                   f'--input={tmp_path}', f'--output={tmp_path / "o"}')
  assert result.returncode == 1
  assert 'has no config.json' in result.stderr


def test_a_pipeline_workdir_stands_for_its_unet(unet_run, tmp_path):
  (tmp_path / 'config.json').write_text('{"trainer": "synth2seg"}')
  (tmp_path / 'unet').symlink_to(unet_run, target_is_directory=True)
  config, workdir = predict.load_run(tmp_path)
  assert config.trainer == 'unet' and workdir == tmp_path / 'unet'
  (tmp_path / 'dcgan').mkdir()
  (tmp_path / 'dcgan' / 'config.json').write_text('{"trainer": "dcgan"}')
  with pytest.raises(predict.PredictError, match="'dcgan' run, which does "
                     'not segment'):
    predict.load_run(tmp_path / 'dcgan')


def test_to_input_grid_undoes_block_means_without_a_shift():
  x, y, z = np.meshgrid(*(np.arange(n) for n in (40, 37, 31)), indexing='ij')
  labels = ((x - 17.3)**2 + (y - 20.1)**2 + (z - 14.6)**2 < 9.5**2).astype(
      np.uint8)
  onehot = np.stack([labels == 0, labels == 1], -1).astype(np.float32)
  subject = {'brain_mask': np.ones(labels.shape, bool),
             'p0': onehot[..., 0], 'p1': onehot[..., 1], 'affine': np.eye(4)}
  small = tissue.block_downsample(subject, 3)
  probs = np.stack([small['p0'], small['p1']], -1)
  back = segmenters.to_input_grid(probs, 3, labels.shape)
  assert back.shape == labels.shape
  assert np.mean(back == labels) > 0.98
  np.testing.assert_allclose(np.argwhere(back).mean(0),
                             np.argwhere(labels).mean(0), atol=0.3)


@pytest.mark.parametrize('resize', ['stretch', 'pad'])
def test_2d_preprocessing_is_the_test_splits(tmp_path, resize):
  images = shared_data('brain_tumor_segmentation', 'images')
  manual = tmp_path / 'manual'
  for sub in ('images', 'masks'):
    (manual / sub).mkdir(parents=True)
    for i in TUMOUR_IDS:
      shutil.copy(images.parent / sub / f'{i}.png', manual / sub / f'{i}.png')
  config = unet_config.get_config('test')
  config.data.update(name='brain_tumor_segmentation', manual_dir=str(manual),
                     data_dir=str(tmp_path / 'tfds'), test_ids='1-2,955',
                     resize=resize)
  split = slices.load_split(config, 'test', config.eval.image_size)
  for i, expected in zip(split['id'], split['image']):
    got = segmenters.preprocess_2d(io.read_image(images / f'{i}.png'), config)
    np.testing.assert_array_equal(got, expected)


def test_3d_preprocessing_is_the_trainers(tmp_path):
  manual = shared_data('tissue_t1')
  config = seg3d_config.get_config('test,tissue_t1')
  config.data.update(slabs=0, split_order='', block_downsample=2,
                     num_labelled=0, num_validation=0, num_test=1,
                     num_unlabelled=0,
                     manual_dir=str(manual), data_dir=str(tmp_path / 'tfds'))
  subject = tissue.load_splits(config)['test'][0]
  data, image = io.read_volume_channels(manual / 'subject01_T1.nii.gz')
  x, brain, factor = segmenters.preprocess_3d(data, image.affine, config)
  assert factor == 2 and brain.shape == data.shape[:3]
  np.testing.assert_array_equal(x[..., 0], subject['t1'])
  np.testing.assert_allclose(
      tissue.block_downsample(
          {'brain_mask': brain, 'affine': image.affine}, 2)['affine'],
      subject['affine'])


def test_3d_mgz_and_analyze_inputs(seg3d_run, tmp_path):
  t1 = nib.load(shared_data('tissue_t1', 'subject01_T1.nii.gz'))
  cropped = t1.slicer[50:98, 60:108, 70:118]
  folder = tmp_path / 'volumes'
  folder.mkdir()
  data = np.asarray(cropped.dataobj)
  nib.save(nib.MGHImage(data, cropped.affine), folder / 'a.mgz')
  nib.save(nib.AnalyzeImage(data, cropped.affine), folder / 'b.img')
  output = tmp_path / 'out'
  summary = predict.run(seg3d_run, folder, output, progress=False)
  assert not summary.failed
  rows = _rows(output)
  assert set(rows) == {'a.mgz', 'b.hdr'}  # an Analyze pair counts once
  for name, source in (('a', folder / 'a.mgz'), ('b', folder / 'b.hdr')):
    seg = nib.load(output / f'{name}_seg.nii.gz')
    assert seg.shape == data.shape
    np.testing.assert_allclose(seg.affine, nib.load(source).affine,
                               atol=1e-5)
