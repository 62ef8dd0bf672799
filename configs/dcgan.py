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
"""
import ml_collections


VARIANTS = ('quick', 'test', 'wgan_gp', 'joint')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config; `arg` lists variants: 'quick', 'test', 'wgan_gp', 'joint'.

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

  # 'non_saturating' (the generator maximises log D(G(z)), what the paper's
  # Keras code trains) or 'minimax' (eq. (1) literally: the generator
  # minimises log(1 - D(G(z))), which saturates early in training).
  config.loss = 'non_saturating'
  # Discriminator (critic) updates per generator update; each reads its own
  # batch of real images, so a step consumes batch_size * d_steps of them.
  config.d_steps = 1
  config.gp_weight = 10.0  # WGAN-GP's lambda (Gulrajani et al. 2017)

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

  variants = [v for v in arg.split(',') if v]
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    raise ValueError(f'Unknown variant {sorted(unknown)[0]!r} of configs/dcgan.py; '
                     f'choose from {VARIANTS}, comma-separated.')
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
    use_wgan_gp(config)
  return config


def use_wgan_gp(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Paper 1's future work: WGAN-GP with Gulrajani et al.'s settings.

  The critic has no dropout (the gradient penalty wants a deterministic
  critic) and takes 5 updates per generator update.
  """
  config.loss = 'wgan_gp'
  config.d_steps = 5
  config.model.discriminator.dropout_rate = 0.0
  config.optim.g_learning_rate = 1e-4
  config.optim.d_learning_rate = 1e-4
  config.optim.b1 = 0.0
  config.optim.b2 = 0.9
  return config


def sweep(add):
  """Ablations of paper 1's DCGAN: loss form and seeds."""
  for loss in ('non_saturating', 'minimax'):
    for seed in (0, 1, 2):
      add(loss=loss, seed=seed)
