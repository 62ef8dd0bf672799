r"""Paper 1's whole pipeline: GAN -> synthetic pairs -> UNet -> real test set.

  # On the built-in phantom, a CPU budget of minutes:
  python launch.py --config=configs/synth2seg.py:quick --workdir=runs/s2s \
    --mode=pipeline
  # On the Kaggle "Brain Tumor Segmentation" download ('real': GAN and UNets
  # on pairs 1..300, validated on 301..350, tested on other patients,
  # 1001..1400):
  python launch.py --config=configs/synth2seg.py:quick,real \
    --workdir=runs/s2s_real --mode=pipeline \
    --config.data.manual_dir=/path/to/brain_tumor_segmentation
  # The ablation table (training data x number of pairs x GAN type x seeds):
  python launch.py --config=configs/synth2seg.py:quick --workdir=runs/s2s_sweep \
    --mode=sweep

Stages (gan/, synthetic/, unet/, fidelity.json, report.md) are resumable:
rerunning the command skips what is finished (see mrseg/synth2seg/pipeline.py).
`gan` and `unet` are full configs/dcgan.py and configs/unet.py configs; the
data settings here are copied into both.
"""
import ml_collections

from configs import cgan
from configs import dcgan
from configs import unet
from mrseg import overrides

VARIANTS = ('quick', 'test', 'real')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The config; `arg`: '' (paper budgets), 'quick', 'test', 'real' (any
  combination, e.g. 'quick,real')."""
  variants = overrides.variants(arg, VARIANTS, 'configs/synth2seg.py')
  # The stages' configs take the same budget variants (quick, test or both).
  stage_variants = ','.join(v for v in variants if v in ('quick', 'test'))
  config = ml_collections.ConfigDict()
  config.trainer = 'synth2seg'
  config.seed = 0
  # Comma-separated subset of reference,gan,sample,unet,fidelity,report.
  config.stages = 'reference,gan,sample,unet,fidelity,report'

  # The data, shared by the GAN, the UNet and the test. The phantom's "ids"
  # are its example numbers: 155 training slices as the paper's 155 real
  # tumour images, and disjoint validation and test slices.
  config.data = ml_collections.ConfigDict()
  config.data.name = 'phantom2d'  # or 'brain_tumor_segmentation'
  config.data.manual_dir = ''
  config.data.data_dir = ''
  config.data.image_size = 128
  config.data.channels = 1
  config.data.resize = 'stretch'
  config.data.train_ids = '0-154'
  config.data.val_ids = '155-204'
  config.data.test_ids = '205-254'
  config.data.contrast = 't1ce'
  config.data.tumor_probability = 1.0
  config.data.seed = 0

  # 'conditional': a GAN that paints an image for a given layout (a real
  # slice's anatomy with a real tumour mask, deformed and moved:
  # configs/cgan.py), so image and mask are aligned by construction;
  # 'joint': a DCGAN that generates image and mask together (paper 1's
  # future work); 'joint_small_data': the same made sound (sigmoid mask,
  # matching-aware D, DiffAugment, R1, spectral norm, EMA:
  # mrseg/train/dcgan_variants.py use_small_data); 'joint_wgan_gp': the
  # same with WGAN-GP; 'manual': the paper's route, an image-only DCGAN
  # whose samples are annotated by hand (masks read back from
  # manual_masks_dir).
  config.gan_type = 'conditional'
  config.manual_masks_dir = ''
  # Where the GAN stage trains: '' = <workdir>/gan; a relative path is taken
  # from the workdir. The sweep points runs that differ only in what comes
  # after the GAN (number of pairs, UNet training data) at one shared GAN.
  config.gan_dir = ''
  # Where the reference UNet (the same UNet on the real training pairs)
  # trains: '' = <workdir>/reference; shared by a sweep's runs of one seed.
  config.reference_dir = ''
  # Pick the GAN checkpoint whose pairs the reference UNet segments best
  # (selection_pairs pairs per checkpoint), not the last one; ties go to
  # fewer empty masks, then to the later step (`quality.best_checkpoint`).
  config.select_checkpoint = True
  config.selection_pairs = 64
  # Quality gates checked before the UNet trains on synthetic pairs; a
  # failure stops the pipeline with the numbers (enforce=False: warn only).
  config.gates = ml_collections.ConfigDict()
  config.gates.max_empty_fraction = 0.2
  config.gates.min_alignment_dice = 0.25
  config.gates.enforce = True
  # 200 synthetic pairs, the paper's number.
  config.num_synthetic = 200
  # Draw keep_best_of x num_synthetic pairs and keep the num_synthetic that
  # the reference UNet (trained on the real pairs only) segments best: a
  # filter against pairs whose tumour the image does not show. 1 = keep all
  # drawn. The gates judge every pair drawn, not the kept ones.
  config.keep_best_of = 1
  # What the UNet trains on: 'synthetic' (the paper), 'real' (the baseline)
  # or 'real+synthetic'.
  config.train_data = 'synthetic'
  # 'default': the UNet config's own augmentation; 'classical': adds
  # classical_augment below, the baseline synthetic pairs must beat.
  config.augmentation = 'default'
  config.classical_augment = ml_collections.ConfigDict(dict(
      flip=True, rotation_degrees=15.0, elastic_alpha=2.0, elastic_sigma=6.0,
      intensity_scale=0.15, intensity_shift=0.05, gamma=0.3))
  config.fidelity_pairs = 500  # MS-SSIM pairs
  # FID/KID feature network: '' = the reference UNet (this run's own UNet
  # when train_data='real'); a UNet workdir (a real-data configs/unet.py run, or a
  # pipeline's <workdir>/unet with train_data=real) scores every run with
  # the same network, so that FIDs compare across runs. Given like --workdir:
  # from the current directory, not from this run's workdir.
  config.fidelity_unet_dir = ''

  config.gan = dcgan.get_config(stage_variants)  # joint / manual GAN types
  config.cgan = cgan.get_config(stage_variants)  # gan_type='conditional'
  # The UNet's epochs count passes over the *real* training split whatever
  # it trains on (unet_trainer.steps_per_epoch), so runs on 50, 200 or 1000
  # synthetic pairs, or on real data, all get the same number of steps.
  config.unet = unet.get_config(stage_variants)

  if 'quick' in variants:
    config.data.image_size = 64
    # The joint GAN draws tumour masks late: at the 600 steps of
    # configs/dcgan.py:quick every mask is still empty (mask channel below
    # 0.5 everywhere); at 1200 steps 188 of 200 samples carry a tumour of
    # median 48 px (real: 38 px at 64x64). Measured with this config, seed 0.
    config.gan.steps_per_epoch = 1500
    config.gan.sample_every_steps = 500
    config.gan.checkpoint_every_steps = 500
    # A fixed UNet budget in steps, the same for every training source and
    # dataset size. 160 steps (8 passes over the 155 phantom slices) stopped
    # at the knee of the learning curve (validation Dice 0.05 at step 100,
    # 0.47 at 160 on real slices), where any change of data only measures
    # how fast learning starts; 600 steps train to a plateau.
    config.unet.num_train_steps = 600
    # Unused while num_train_steps is set; kept at configs/unet.py:quick's
    # former value so that the stage folders of earlier runs, whose saved
    # configs hold it, stay reusable.
    config.unet.num_epochs = 8
    config.unet.eval_every_steps = 50
    # Each image to mean 0, std 1: the phantom's and the real set's
    # brightness varies from slice to slice.
    config.unet.model.input_norm = 'zscore'
  if 'real' in variants:
    # The figshare tumour set as Kaggle's "Brain Tumor Segmentation" lays it
    # out (give --config.data.manual_dir). Consecutive ids share patients:
    # train on 1..300, select checkpoints on 301..350, test on 1001..1400,
    # slices of other patients (ids next to the training ids overestimate).
    config.data.name = 'brain_tumor_segmentation'
    config.data.train_ids = '1-300'
    config.data.val_ids = '301-350'
    config.data.test_ids = '1001-1400'
    # Its "brain" mask is a head mask (no skull stripping): new tumours go
    # near the host's own, not into the scalp or the orbits (README).
    config.cgan.masks.placement = 'host'
  if 'test' in variants:
    config.data.image_size = 16
    config.data.train_ids = '0-11'
    config.data.val_ids = '12-15'
    config.data.test_ids = '16-19'
    config.num_synthetic = 8
    config.fidelity_pairs = 10
    config.unet.eval.image_size = 0
    config.unet.model.depth = 2
    config.selection_pairs = 4
    # Tiny networks after a few steps pass no gate; the gate tests set it.
    config.gates.enforce = False
  return config


# paired.md: every arm against the real pairs alone and against classical
# augmentation, seed by seed (the reviewer's two questions).
SWEEP_BASELINES = [{'train_data': 'real'},
                   {'train_data': 'real', 'augmentation': 'classical'}]
# The arms' own test Dice (pooled, and the mean over cases); the other Dice
# numbers (reference UNet, pair alignment) are not the arm's result.
SWEEP_PAIRED_METRICS = ('test_dice', 'test_case_dice_mean')
# The learning curves (curves.csv/png) are the arms' own UNets' validation.
SWEEP_HISTORY = 'unet/history.jsonl'


def sweep(add):
  """The reviewer's question: do synthetic pairs teach, and beat augmentation?

  Per seed: the real pairs alone, with classical augmentation, and the
  synthetic pairs of the conditional GAN, the paper's joint GAN and the
  joint GAN made sound, alone (50 / 200 /
  1000 pairs) and added to the real ones. For the conditional GAN also the
  200 best of 1000 drawn (`keep_best_of=5`), alone, added to the real ones,
  and added to the real ones with classical augmentation (against the
  classical arm: do synthetic pairs add to what augmentation gives?).
  Runs of one seed share one reference UNet (`reference_dir`) and, per GAN
  type, one GAN (`gan_dir`), so the number of pairs and the UNet's data
  vary with the GAN held fixed. Gates only warn here: the table reports
  every run with its checks.
  """
  for seed in (0, 1, 2):
    add(train_data='real', seed=seed)
    add(train_data='real', augmentation='classical', seed=seed)
    shared = {'seed': seed, 'reference_dir': f'../reference_seed{seed}',
              'gates.enforce': False}
    for gan_type in ('conditional', 'joint', 'joint_small_data'):
      gan_dir = f'../gans/{gan_type}_seed{seed}'
      for num in (50, 200, 1000):
        add(train_data='synthetic', gan_type=gan_type, num_synthetic=num,
            gan_dir=gan_dir, **shared)
      add(train_data='real+synthetic', gan_type=gan_type, num_synthetic=200,
          gan_dir=gan_dir, **shared)
    kept = {'gan_type': 'conditional', 'num_synthetic': 200, 'keep_best_of': 5,
            'gan_dir': '../gans/conditional_seed' + str(seed), **shared}
    add(train_data='synthetic', **kept)
    add(train_data='real+synthetic', **kept)
    add(train_data='real+synthetic', augmentation='classical', **kept)
