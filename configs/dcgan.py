r"""Paper 1 (Bendre): a DCGAN that synthesizes 128x128 tumour MRI slices.

Every number of the paper is a value here, so an ablation is an override.

  # The paper's budget (10 epochs x 3750 steps at batch 4) on the phantom:
  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan
  # A CPU demo in a few minutes:
  python launch.py --config=configs/dcgan.py:quick --workdir=runs/dcgan_quick
  # On the Kaggle "Brain MRI Images for Brain Tumor Detection" download
  # (the paper trains on its 155 `yes/` images):
  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan_kaggle \
    --config.data.name=brain_tumor_detection \
    --config.data.manual_dir=/path/to/brain_tumor_dataset
  # 200 PNGs + one .npz from the latest checkpoint:
  python launch.py --config=configs/dcgan.py --workdir=runs/dcgan \
    --mode=sample --num_samples=200

A run writes config.json, TensorBoard events, checkpoints/, samples/step_N.png,
figures/losses.png (paper Fig. 10), figures/intensity_distribution.png (paper
Fig. 11) and metrics.json into the workdir.

Beyond the paper, the `small_data` variant trains a GAN that 155 images do
not wreck (DiffAugment, R1, spectral norm, generator EMA, resize-convolution
up-sampling) and makes the joint GAN's masks fit their images (sigmoid mask
channel with soft targets, matching-aware discriminator):

  python launch.py --config=configs/dcgan.py:quick,joint,small_data \
    --workdir=runs/dcgan_joint_small
"""
import ml_collections

from mrseg import overrides
from mrseg.train import dcgan_variants


VARIANTS = ('quick', 'test', 'wgan_gp', 'joint', 'small_data')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config; `arg` lists variants (VARIANTS), comma-separated.

  Variants combine, e.g. `configs/dcgan.py:quick,wgan_gp`; none is the paper.
  """
  config = ml_collections.ConfigDict()
  config.trainer = 'dcgan'
  config.seed = 0
  # 'jit': one jitted step over a device mesh with a 'data' axis (default);
  # 'pmap': the same step under jax.pmap with lax.pmean over the axis.
  config.parallel = 'jit'

  config.data = ml_collections.ConfigDict()
  # 'phantom2d' (built in, no download) or 'brain_tumor_detection' (Kaggle).
  config.data.name = 'phantom2d'
  config.data.manual_dir = ''  # the user's download, in the dataset's layout
  config.data.data_dir = ''  # where TFDS keeps prepared data; '' = TFDS default
  config.data.image_size = 128  # the paper resizes every slice to 128x128
  config.data.channels = 1
  # 'stretch' resizes as the paper does; 'pad' pads to a square first, which
  # keeps the anatomy's aspect ratio for the non-square Kaggle images.
  config.data.resize = 'stretch'
  # brain_tumor_detection: which folders to train on ('yes' = the paper's 155).
  config.data.labels = ('yes',)
  # phantom2d: as many slices as the paper had real ones.
  config.data.num_examples = 155
  config.data.contrast = 't1ce'
  config.data.tumor_probability = 1.0
  config.data.seed = 0  # the phantom's own seed, independent of training

  config.model = ml_collections.ConfigDict()
  config.model.noise_dim = 100
  config.model.dtype = 'float32'  # compute dtype; 'bfloat16' on GPU/TPU
  # Generate the tumour mask as a second channel with the image (Neff et al.
  # 2017, paper 1's future work); needs a dataset with masks.
  config.model.joint_mask = False
  # The joint GAN's mask channel (ignored without joint_mask): 'tanh' (the paper's output layer, like the
  # image) or 'sigmoid' (a probability; real masks then enter D smoothed to
  # [mask_smoothing, 1 - mask_smoothing]). Against hard -1/+1 targets the
  # tanh channel saturates (93% of outputs |y| > 0.99, issue 10) and its
  # gradient all but vanishes, so masks land anywhere or stay empty.
  config.model.mask_output = 'tanh'
  config.model.generator = ml_collections.ConfigDict()
  config.model.generator.base_size = 32
  config.model.generator.base_features = 256
  config.model.generator.up_features = (128, 128)
  config.model.generator.up_kernel = 4
  config.model.generator.out_kernel = 4
  config.model.generator.negative_slope = 0.2
  # 'subpixel' computes ConvTranspose exactly, as a stride-1 convolution
  # and depth-to-space (same parameters), which is much faster on XLA:CPU.
  config.model.generator.upsample = 'subpixel'
  config.model.generator.weight_init = 'glorot_uniform'  # Keras' default
  config.model.discriminator = ml_collections.ConfigDict()
  config.model.discriminator.features = (64, 128, 128, 256)
  config.model.discriminator.strides = (1, 2, 2, 2)
  config.model.discriminator.kernel = 3
  config.model.discriminator.negative_slope = 0.2
  config.model.discriminator.dropout_rate = 0.4
  config.model.discriminator.weight_init = 'glorot_uniform'
  # 'fast_grad' computes nn.Conv exactly (same parameters) with a matrix-
  # product weight gradient, which XLA:CPU runs several times faster;
  # 'xla' is nn.Conv. Either is fine on GPU/TPU.
  config.model.discriminator.conv = 'fast_grad'
  # Spectral norm on every convolution and the dense layer (Miyato et al.
  # 2018); same parameters. Off in the paper.
  config.model.discriminator.spectral_norm = False

  # 'non_saturating' (the generator maximises log D(G(z)), what the paper's
  # Keras code trains) or 'minimax' (eq. (1) literally: the generator
  # minimises log(1 - D(G(z))), which saturates early in training).
  config.loss = 'non_saturating'
  # Discriminator (critic) updates per generator update; each reads its own
  # batch of real images, so a step consumes batch_size * d_steps of them.
  config.d_steps = 1
  config.gp_weight = 10.0  # WGAN-GP's lambda (Gulrajani et al. 2017)

  # Beyond the paper; every default below is off. With 155 real images D
  # memorises the training set within a few hundred steps (issue 10).
  # DiffAugment (Zhao et al. 2020) of every image D sees, real and fake
  # (mrseg.train.diffaug.POLICIES, comma-separated; '' = off).
  config.diffaug = ''
  # R1 penalty gamma/2 E||grad D(x)||^2 on real images (Mescheder et al.
  # 2018); 0 = off. Not with wgan_gp, whose critic has its own penalty.
  config.r1_gamma = 0.0
  # Decay of the generator EMA that samples and metrics use; 0 = off (the
  # raw generator, as the paper).
  config.ema_decay = 0.0
  # Joint GAN only (the image-only GAN ignores it): a matching-aware D (Reed et al. 2016) also sees real
  # images with their mask moved by (low, high) x the size in a random
  # direction, as fakes with this weight (the generated pairs keep
  # 1 - weight). Without it D cannot tell a mask that fits its image from
  # one that does not (issue 10).
  config.mismatch_weight = 0.0
  config.mismatch_shift = (0.15, 0.4)
  # mask_output='sigmoid' only: real masks become [eps, 1 - eps].
  config.mask_smoothing = 0.05

  config.optim = ml_collections.ConfigDict()
  # Radford et al.'s Adam settings, which the paper's Keras code uses.
  config.optim.g_learning_rate = 2e-4
  config.optim.d_learning_rate = 2e-4
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999
  config.optim.eps = 1e-7  # Keras' Adam epsilon

  config.batch_size = 4  # global batch, split over devices
  config.num_epochs = 10
  config.steps_per_epoch = 3750

  config.log_every_steps = 50
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.num_grid_samples = 16  # samples/step_N.png is a 4x4 grid
  # Generated images used for figures/intensity_distribution.png at the end.
  config.num_eval_samples = 155

  variants = overrides.variants(arg, VARIANTS, 'configs/dcgan.py')
  if 'quick' in variants:
    # A few minutes on a 2-core CPU: enough to see blobs become brains.
    config.data.image_size = 64
    config.model.generator.base_size = 16
    config.model.generator.base_features = 128
    config.model.generator.up_features = (64, 64)
    config.model.discriminator.features = (32, 64, 64, 128)
    config.batch_size = 16
    config.num_epochs = 1
    config.steps_per_epoch = 600
    config.log_every_steps = 20
    config.sample_every_steps = 200
    config.checkpoint_every_steps = 200
  if 'test' in variants:
    # Seconds: a tiny network on 16x16 images.
    config.data.image_size = 16
    config.data.num_examples = 12
    config.model.noise_dim = 8
    config.model.generator.base_size = 4
    config.model.generator.base_features = 8
    config.model.generator.up_features = (4, 4)
    config.model.discriminator.features = (4, 8, 8, 8)
    config.batch_size = 4
    config.num_epochs = 1
    config.steps_per_epoch = 3
    config.log_every_steps = 1
    config.sample_every_steps = 2
    config.checkpoint_every_steps = 2
    config.num_grid_samples = 4
    config.num_eval_samples = 8
  if 'joint' in variants:
    config.model.joint_mask = True
  if 'wgan_gp' in variants:
    dcgan_variants.use_wgan_gp(config)
  if 'small_data' in variants:
    dcgan_variants.use_small_data(config)
  return config


def sweep(add):
  """Ablations of paper 1's DCGAN: loss form and seeds."""
  for loss in ('non_saturating', 'minimax'):
    for seed in (0, 1, 2):
      add(loss=loss, seed=seed)
