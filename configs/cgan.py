r"""Label-conditioned generation of tumour MRI slices (beyond paper 1).

A generator maps a layout (outside / K intensity classes / tumour mask,
computed from each real slice without pretrained weights: see
mrseg/data/layouts.py) and noise to an image; a PatchGAN judges (layout,
image) pairs, and also sees real images with a *shifted* tumour mask as
fakes (matching-aware, Reed et al. 2016), so a tumour that is not under its
mask is penalised. Synthetic pairs are made from real training masks,
deformed and placed in host brains: aligned by construction.

  # On the built-in phantom, a CPU budget of minutes:
  python launch.py --config=configs/cgan.py:quick --workdir=runs/cgan
  # 200 pairs from the latest checkpoint (PNGs, samples.npz, provenance.csv):
  python launch.py --config=configs/cgan.py:quick --workdir=runs/cgan \
    --mode=sample --num_samples=200

Usually run as a stage of configs/synth2seg.py (gan_type='conditional').
"""
import ml_collections

from mrseg import overrides

VARIANTS = ('quick', 'test', 'pix2pix')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config; `arg` lists variants: 'quick', 'test', 'pix2pix'."""
  variants = overrides.variants(arg, VARIANTS, 'configs/cgan.py')
  config = ml_collections.ConfigDict()
  config.trainer = 'cgan'
  config.seed = 0
  config.parallel = 'jit'  # or 'pmap'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'phantom2d'  # or 'brain_tumor_segmentation'
  config.data.manual_dir = ''
  config.data.data_dir = ''
  config.data.image_size = 128
  config.data.channels = 1
  config.data.resize = 'stretch'
  # The GAN trains on the training split only (the UNet's real training
  # cases); val/test ids are kept so the pipeline can copy one data section.
  config.data.train_ids = '0-154'
  config.data.val_ids = '155-204'
  config.data.test_ids = '205-254'
  config.data.contrast = 't1ce'
  config.data.tumor_probability = 1.0
  config.data.seed = 0

  # Layouts (mrseg.data.layouts.LayoutSpec).
  config.layout = ml_collections.ConfigDict()
  config.layout.num_classes = 3  # intensity classes inside the brain
  config.layout.smooth = 1.0  # Gaussian sigma (px) before classing
  config.layout.threshold = 0.1  # brain mask: > this x 99th percentile
  config.layout.inpaint_dilation = 2  # px of the real tumour's rim hidden
  # T tumour labels: the tumour's pixels classed by the brain's intensity
  # quantiles (dark core / mid / bright rim or enhancement), so G is told
  # which kind of lesion to paint instead of averaging the kinds (BraTS
  # sub-region labels play this part for brainSPADE); 1 = the mask alone.
  # On the phantom, seed 0 (README): 3 raised the synthetic-only Dice from
  # 0.48 to 0.64 and the alignment from 0.33 to 0.59.
  config.layout.tumour_classes = 3

  # Tumour masks at synthesis time (mrseg.data.layouts.MaskTransform).
  config.masks = ml_collections.ConfigDict()
  config.masks.rotation_degrees = 180.0
  config.masks.scale = (0.7, 1.3)  # log-uniform
  config.masks.flip = True
  config.masks.elastic_alpha = 1.5  # px
  config.masks.elastic_sigma = 3.0  # px
  config.masks.min_inside = 0.95  # fraction of the tumour inside the brain
  config.masks.min_pixels = 4
  config.masks.placement = 'random'  # or 'host' (where the host's was)

  config.model = ml_collections.ConfigDict()
  config.model.noise_dim = 16
  config.model.dtype = 'float32'
  config.model.generator = ml_collections.ConfigDict()
  config.model.generator.features = (64, 128, 256, 512)
  # 'spade': layout-driven normalisation in every decoder block (SPADE);
  # 'instance': pix2pix's U-Net (the layout enters at the input only).
  config.model.generator.norm = 'spade'
  config.model.generator.spade_hidden = 64
  config.model.generator.noise_features = 32
  config.model.generator.weight_init = 'glorot_uniform'
  config.model.discriminator = ml_collections.ConfigDict()
  config.model.discriminator.features = (64, 128, 256)
  config.model.discriminator.spectral_norm = True
  config.model.discriminator.norm = 'none'  # 'instance' is pix2pix's
  config.model.discriminator.weight_init = 'glorot_uniform'

  # 'hinge' (SPADE, SAGAN) or 'non_saturating'.
  config.loss = 'hinge'
  # L1 between G(layout of a real slice) and that slice (pix2pix's lambda,
  # on images in [-1, 1]); 0 = adversarial only.
  config.rec_weight = 10.0
  # The L1's weight on tumour pixels relative to the rest (1 = pix2pix's
  # plain L1). The tumour is ~1.5% of a slice, so a plain L1 hardly asks G
  # to paint it; a weight w gives it a share of about w * 1.5%.
  config.rec_tumour_weight = 1.0
  # What G sees besides the layout. 'none': the layout alone (pix2pix /
  # SPADE label-to-image): G invents all anatomy, blurred at small budgets.
  # 'host_image': lesion inpainting (e.g. Kim et al. 2021): the real host
  # slice with a hole around the tumour, G paints only the hole and the
  # host's pixels are kept outside it. At training the hole covers the
  # slice's tumour and a shifted copy of it (healthy tissue to fill); at
  # synthesis the new tumour and the host's own, which is painted over.
  config.context = 'none'
  config.hole_dilation = 3  # px around the masks, in the hole
  # Matching-aware D (Reed et al. 2016): real images with their tumour mask
  # shifted by a fraction of the size in [low, high] count as fakes with
  # this weight (generated ones with 1 - it).
  config.mismatch_weight = 0.5
  config.mismatch_shift = (0.15, 0.4)
  config.r1_gamma = 0.0  # R1 penalty gamma (Mescheder et al.); 0 = off
  # DiffAugment of every pair D sees (mrseg.train.diffaug.POLICIES).
  config.diffaug = 'translation,flip,color'
  # Generator EMA, used for every sample (decay warmed up as
  # min(decay, (1 + step) / (10 + step))); 0 = the raw generator.
  config.ema_decay = 0.999

  config.optim = ml_collections.ConfigDict()
  config.optim.g_learning_rate = 2e-4
  config.optim.d_learning_rate = 2e-4
  config.optim.b1 = 0.5  # pix2pix's Adam
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  config.batch_size = 16
  config.num_train_steps = 10000
  config.log_every_steps = 50
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 10
  config.num_grid_samples = 16
  config.num_eval_samples = 155

  if 'quick' in variants:
    config.data.image_size = 64
    config.model.generator.features = (32, 64, 128, 256)
    config.model.generator.spade_hidden = 32
    config.model.discriminator.features = (32, 64, 128)
    # 1800 steps: the pairs' alignment (the reference UNet's Dice on them)
    # still rose at 900 steps (0.41 / 0.46 / 0.48 at 300 / 600 / 900), and at
    # 1800 a UNet on 200 synthetic pairs alone matched the real-trained one
    # on the phantom (seed 0: 0.720 vs 0.718; 900 steps: 0.645).
    config.num_train_steps = 1800
    config.log_every_steps = 20
    config.sample_every_steps = 300
    config.checkpoint_every_steps = 300
  if 'test' in variants:
    config.data.image_size = 16
    config.data.train_ids = '0-11'
    config.data.val_ids = '12-15'
    config.data.test_ids = '16-19'
    config.model.noise_dim = 4
    config.model.generator.features = (4, 8)
    config.model.generator.spade_hidden = 4
    config.model.generator.noise_features = 4
    config.model.discriminator.features = (4, 8)
    config.batch_size = 4
    config.num_train_steps = 4
    config.log_every_steps = 1
    config.sample_every_steps = 2
    config.checkpoint_every_steps = 2
    config.num_grid_samples = 4
    config.num_eval_samples = 8
  if 'pix2pix' in variants:
    config.model.generator.norm = 'instance'
    config.model.discriminator.spectral_norm = False
    config.model.discriminator.norm = 'instance'
    config.loss = 'non_saturating'
    config.rec_weight = 100.0
  return config


def sweep(add):
  """Generator normalisation and matching-aware D, over seeds."""
  for seed in (0, 1, 2):
    for norm in ('spade', 'instance'):
      add(**{'model.generator.norm': norm, 'seed': seed})
    add(mismatch_weight=0.0, seed=seed)
