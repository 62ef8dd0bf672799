"""Named changes to a configs/dcgan.py config: paper 1's future work.

Library code (the synth2seg pipeline's gan_type) and configs/dcgan.py's
variants both apply them, so they live here, not in configs/.
"""
import ml_collections


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
  # The gradient penalty takes the place of R1 and spectral norm (see
  # use_small_data), whichever of the two functions runs first.
  config.r1_gamma = 0.0
  config.model.discriminator.spectral_norm = False
  return config


def use_small_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Options for a GAN trained on ~155 images; the joint GAN made sound.

  Gives the same config before or after `use_wgan_gp` and before or after
  `model.joint_mask` is set (the joint-only keys do nothing without it):

  * DiffAugment 'translation,cutout,color' (Zhao et al.'s choice for 100-
    image data sets), so D cannot memorise the 155 slices.
  * Spectral norm in D, and R1 with gamma 0.1 (Karras et al. 2020's
    heuristic 2e-4 * size^2 / batch gives 0.05 at 64x64, batch 16) unless
    the loss is WGAN-GP, whose gradient penalty does that job.
  * A generator EMA of decay 0.999 for every sample and metric.
  * Resize-convolution up-sampling: the same parameter shapes as the
    paper's transposed convolutions without their checkerboard (Odena et
    al. 2016), which the samples showed.
  * Joint GAN: a sigmoid mask channel with soft targets, and real images
    with misplaced masks as fakes at weight 0.5 (Reed et al.'s 1/2).
  """
  config.diffaug = 'translation,cutout,color'
  if config.loss != 'wgan_gp':
    config.r1_gamma = 0.1
    config.model.discriminator.spectral_norm = True
  config.ema_decay = 0.999
  config.model.generator.upsample = 'resize_conv'
  config.model.mask_output = 'sigmoid'
  config.mismatch_weight = 0.5
  return config
