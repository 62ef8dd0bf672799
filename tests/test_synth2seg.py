"""Paper 1's pipeline: stages run, are skipped when done, and resume."""
import json
import os

import numpy as np
import pytest

from PIL import Image

from configs import synth2seg as synth2seg_config
from mrseg import quality
from mrseg.synth2seg import pipeline as synth2seg


def test_stage_configs_share_the_data_and_pick_the_gan():
  config = synth2seg_config.get_config('test')
  config.data.train_ids = '0-9'
  gan, unet, reference = synth2seg.stage_configs(config)
  assert config.gan_type == 'conditional' and gan.trainer == 'cgan'
  assert gan.data.train_ids == reference.data.train_ids == '0-9'
  assert reference.data.train_source == 'real'
  config.gan_type = 'joint_wgan_gp'
  gan, unet, _ = synth2seg.stage_configs(config)
  assert gan.data.train_ids == unet.data.train_ids == '0-9'
  assert gan.data.image_size == unet.data.image_size == 16
  assert gan.model.joint_mask and gan.loss == 'wgan_gp' and gan.d_steps == 5
  assert unet.data.train_source == 'synthetic'
  config.gan_type = 'manual'
  gan, _, _ = synth2seg.stage_configs(config)
  assert not gan.model.joint_mask and gan.loss == 'non_saturating'
  config.augmentation = 'classical'
  _, unet, reference = synth2seg.stage_configs(config)
  assert unet.augment.elastic_alpha > 0 and unet.augment.gamma > 0
  assert reference.augment.elastic_alpha == 0  # the plain real baseline
  config.augmentation = 'mixup'
  with pytest.raises(ValueError, match='augmentation'):
    synth2seg.stage_configs(config)
  config.augmentation = 'default'
  config.gan_type = 'vae'
  with pytest.raises(ValueError, match='gan_type'):
    synth2seg.stage_configs(config)


def test_pipeline_runs_skips_finished_stages_and_resumes(tmp_path):
  workdir = str(tmp_path / 'pipeline')
  config = synth2seg_config.get_config('test')
  # "Interrupted" after the GAN: only its stage ran.
  config.stages = 'gan'
  synth2seg.train_and_evaluate(config, workdir)
  gan_metrics = os.path.join(workdir, 'gan', 'metrics.json')
  assert os.path.exists(gan_metrics)
  assert not os.path.exists(os.path.join(workdir, 'unet'))
  stamp = os.path.getmtime(gan_metrics)

  config.stages = 'reference,gan,sample,unet,fidelity,report'
  summary = synth2seg.train_and_evaluate(config, workdir)
  assert os.path.getmtime(gan_metrics) == stamp  # the GAN was not retrained
  with open(os.path.join(workdir, 'synthetic', 'samples.npz'), 'rb'):
    pass
  for name in ('report.md', 'metrics.json', 'fidelity.json',
               os.path.join('unet', 'metrics.json'),
               os.path.join('reference', 'metrics.json'),
               os.path.join('unet', 'figures', 'overlays.png'),
               os.path.join('synthetic', 'pairs_grid.png'),
               os.path.join('synthetic', 'provenance.csv'),
               os.path.join('synthetic', 'checks.json'),
               os.path.join('synthetic', 'sample_0000_layout.png')):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert 0 <= summary['test_dice'] <= 1
  assert 0 <= summary['reference_test_dice'] <= 1
  # The file a sweep of this config reads its learning curves from.
  history = os.path.join(workdir, synth2seg_config.SWEEP_HISTORY)
  assert any('val_dice' in json.loads(line) for line in open(history))
  for key in ('synthetic_alignment_dice', 'synthetic_empty_fraction',
              'synthetic_memorisation_ratio', 'synthetic_selected_step'):
    assert key in summary, key
  # Selection scored every kept GAN checkpoint (steps 2 and 4).
  checks = json.load(open(os.path.join(workdir, 'synthetic', 'checks.json')))
  assert [r['step'] for r in checks['selection']] == [2, 4]
  assert summary['table_iii_correct'] + summary['table_iii_incorrect'] <= 4
  assert summary['fid'] >= 0
  report = open(os.path.join(workdir, 'report.md')).read()
  assert 'Table III' in report and '8 pairs from a `conditional` GAN' in report
  assert 'alignment' in report and 'pairs_grid.png' in report
  saved = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert saved['test_dice'] == pytest.approx(summary['test_dice'])

  # A rerun trains nothing again.
  unet_metrics = os.path.join(workdir, 'unet', 'metrics.json')
  stamp = os.path.getmtime(unet_metrics)
  synth2seg.train_and_evaluate(config, workdir)
  assert os.path.getmtime(unet_metrics) == stamp

  # FID/KID scored by another run's UNet (here: this one's, by path), as a
  # sweep does to make its runs comparable; a wrong path names itself.
  os.remove(os.path.join(workdir, 'fidelity.json'))
  config.stages = 'fidelity'
  config.fidelity_unet_dir = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    synth2seg.train_and_evaluate(config, workdir)
  config.fidelity_unet_dir = os.path.join(workdir, 'unet')
  synth2seg.train_and_evaluate(config, workdir)
  again = json.load(open(os.path.join(workdir, 'fidelity.json')))
  assert again['features'].startswith(
      f'UNet bottleneck of {config.fidelity_unet_dir} (best, step')
  assert summary['features'].startswith(
      f'UNet bottleneck of {os.path.join(workdir, "reference")}')

  # The alignment gate reads checks.json: an impossible threshold stops the
  # pipeline before the UNet, naming the number and the override.
  config.stages = 'sample'
  config.gates.enforce = True
  config.gates.min_alignment_dice = 1.01
  with pytest.raises(quality.QualityGateError,
                     match=r'finds the synthetic masks with Dice .*enforce=False'):
    synth2seg.train_and_evaluate(config, workdir)


def test_manual_route_stops_with_instructions(tmp_path):
  workdir = str(tmp_path / 'manual')
  config = synth2seg_config.get_config('test')
  config.gan_type = 'manual'
  config.stages = 'gan,sample'
  with pytest.raises(RuntimeError, match='annotate the 8 images'):
    synth2seg.train_and_evaluate(config, workdir)
  # The images to annotate are there.
  pngs = [f for f in os.listdir(os.path.join(workdir, 'synthetic'))
          if f.endswith('.png')]
  assert len(pngs) == 8


def test_pipeline_refuses_an_all_empty_synthetic_set(tmp_path):
  workdir = tmp_path / 'manual'
  config = synth2seg_config.get_config('test')
  config.gan_type = 'manual'
  config.stages = 'gan,sample,unet'
  with pytest.raises(RuntimeError, match='annotate'):
    synth2seg.train_and_evaluate(config, str(workdir))
  # Every "annotation" is empty: the UNet would learn that no image holds a
  # tumour. The gate stops the run before the UNet stage.
  masks = tmp_path / 'masks'
  masks.mkdir()
  for png in sorted((workdir / 'synthetic').glob('sample_*.png')):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(masks / png.name)
  config.manual_masks_dir = str(masks)
  config.gates.enforce = True
  with pytest.raises(quality.QualityGateError,
                     match='100% of the synthetic masks are empty'):
    synth2seg.train_and_evaluate(config, str(workdir))
  assert not (workdir / 'unet').exists()


def test_runs_share_a_gan_through_gan_dir(tmp_path):
  """Sweep runs that differ after the GAN stage train their GAN once."""
  config = synth2seg_config.get_config('test')
  config.gan_type = 'joint'
  config.stages = 'reference,gan,sample'
  config.gan_dir = '../gans/joint_seed0'
  config.reference_dir = '../reference_seed0'
  synth2seg.train_and_evaluate(config, str(tmp_path / 'a'))
  gan_metrics = tmp_path / 'gans' / 'joint_seed0' / 'metrics.json'
  assert gan_metrics.exists() and not (tmp_path / 'a' / 'gan').exists()
  assert (tmp_path / 'reference_seed0' / 'metrics.json').exists()
  stamp = os.path.getmtime(gan_metrics)

  config.num_synthetic = 4
  synth2seg.train_and_evaluate(config, str(tmp_path / 'b'))
  assert os.path.getmtime(gan_metrics) == stamp  # reused, not retrained
  with np.load(tmp_path / 'b' / 'synthetic' / 'samples.npz') as npz:
    assert len(npz['image']) == 4 and npz['mask'].shape[-1] == 1

  # A GAN of another config in that folder is refused, naming what differs.
  config.gan_type = 'joint_wgan_gp'
  with pytest.raises(ValueError, match=r"another config .*'d_steps'"):
    synth2seg.train_and_evaluate(config, str(tmp_path / 'c'))

  # A finished GAN is reused as it is: another length is refused too; an
  # unfinished one may be resumed to another length (as workdir.start_run).
  config.gan_type = 'joint'
  config.gan.num_epochs += 1
  with pytest.raises(ValueError, match=r"another config .*'num_epochs'"):
    synth2seg.train_and_evaluate(config, str(tmp_path / 'd'))
  gan_metrics.unlink()
  config.stages = 'gan'
  synth2seg.train_and_evaluate(config, str(tmp_path / 'd'))
  history = (tmp_path / 'gans' / 'joint_seed0' / 'history.jsonl').read_text()
  assert json.loads(history.splitlines()[-1])['step'] == (
      config.gan.num_epochs * config.gan.steps_per_epoch)


def test_keep_best_of_keeps_the_pairs_the_reference_finds_best(tmp_path):
  workdir = tmp_path / 'kept'
  config = synth2seg_config.get_config('test')
  config.stages = 'reference,gan,sample,unet,report'
  config.num_synthetic = 4
  config.keep_best_of = 3
  synth2seg.train_and_evaluate(config, str(workdir))
  checks = json.loads((workdir / 'synthetic' / 'checks.json').read_text())
  assert checks['drawn_pairs'] == 12 and checks['num_pairs'] == 4
  assert checks['keep_best_of'] == 3
  with np.load(workdir / 'synthetic' / 'samples.npz') as npz:
    assert len(npz['image']) == len(npz['mask']) == len(npz['layout']) == 4
  rows = (workdir / 'synthetic' / 'provenance.csv').read_text().splitlines()
  header = rows[0].split(',')
  drawn = [int(r.split(',')[header.index('drawn_index')]) for r in rows[1:]]
  scores = [float(r.split(',')[header.index('reference_pair_dice')])
            for r in rows[1:]]
  assert len(drawn) == 4 and drawn == sorted(drawn) and max(drawn) < 12
  assert min(scores) == pytest.approx(checks['kept_min_pair_dice'], abs=1e-4)
  report = (workdir / 'report.md').read_text()
  assert 'the best 4 of 12 drawn pairs' in report
  config.keep_best_of = 0
  with pytest.raises(ValueError, match='keep_best_of must be an integer'):
    synth2seg.stage_configs(config)
