r"""Paper 2's config family: semi-supervised 3D CSF/GM/WM segmentation.

One trainer (`mrseg.train.mrigan_trainer`) runs three models, picked by
`model.kind`; `base_config(kind)` builds every key once and
`configs/{seg3d,fewshot_gan,mrigan}.py` only choose the kind:

* 'supervised': Mondal et al.'s 3D UNet segmenter (the GAN's discriminator
  network) trained with the class-weighted labelled loss alone.
* 'fewshot_gan': Mondal et al. 2018 ("Standard-GAN" in paper 2): a noise
  generator, a K+1-class discriminator on labelled + unlabelled + generated
  patches, feature-matching L1 for the generator, their code's weights
  1 / 0.5 / 0.5.
* 'mrigan': paper 2 (MRI-GAN): a generator fed with an unlabelled MRI patch
  and a labelled patch's tissue map (GT-layers + boundary network), weights
  1 / 1 / 2, squared-L2 feature matching plus the boundary loss.

This file is also the config of the three-model comparison; its `sweep()`
trains each kind with 3 seeds and writes one table:

  # CPU, 2-15 minutes per run (9 runs): results.md, paired.md
  python launch.py --config=configs/tissue_base.py:mrigan,quick \
    --workdir=runs/tissue_compare --mode=sweep
  # The same comparison on one real T1 volume (T1 only; slabs as subjects):
  python launch.py --config=configs/tissue_base.py:mrigan,quick,tissue_t1 \
    --workdir=runs/tissue_t1_compare --mode=sweep \
    --config.data.manual_dir=../shared/data/tissue_t1

Data: the built-in 3D phantom by default (10 subjects: 3 test, 1
validation, 2 labelled, 4 unlabelled; T1 + T2; 'quick': 11, with 2
validation subjects). Real data by override:

  --config.data.name=iseg2017 --config.data.manual_dir=/path/to/iSeg-2017
  --config.data.name=mrbrains13/tissue --config.data.manual_dir=...
  --config.data.name=freesurfer_tissue --config.data.manual_dir=...
  --config.data.modalities=t1           # single modality (T1 only)

Variants (after the colon, comma-separated, combinable): a kind name
('supervised', 'fewshot_gan', 'mrigan'; this file only), 'quick' (the CPU
protocol: 3000 steps or a validation plateau, 2-15 minutes a run), 'test'
(seconds, for unit tests), 'tissue_t1' (one FreeSurfer subject cut into
slabs, T1 only; set data.manual_dir).
"""
import ml_collections

from mrseg import overrides
from mrseg.train import mrigan_kinds

# The kinds mrseg/train/mrigan_kinds.py describes.
KINDS = tuple(mrigan_kinds.KINDS)
VARIANTS = ('quick', 'test', 'tissue_t1')

# Values that differ between the three models, in one place: base_config()
# sets them and the comparison sweep passes them as overrides, so the table
# shows which weights each row used.
KIND_DEFAULTS = {
    # The labelled loss only (the unlabelled and fake terms weigh 0).
    'supervised': {'loss.unlabelled_weight': 0.0, 'loss.fake_weight': 0.0},
    # Mondal et al.'s code: D = labelled + 0.5 unlabelled + 0.5 fake; G = L1
    # feature matching.
    'fewshot_gan': {'loss.unlabelled_weight': 0.5, 'loss.fake_weight': 0.5,
                    'loss.feature_matching': 'l1'},
    # Paper 2, Sec. 3: 1.0 / 1.0 / 2.0; G = squared L2 feature matching
    # (+ the boundary loss).
    'mrigan': {'loss.unlabelled_weight': 1.0, 'loss.fake_weight': 2.0,
               'loss.feature_matching': 'l2'},
}


def kind_overrides(kind: str) -> dict[str, object]:
  """Dotted overrides that turn any config of this family into `kind`."""
  if kind not in KINDS:
    raise ValueError(f'Unsupported model.kind {kind!r}; choose one of '
                     f'{KINDS}.')
  return {'model.kind': kind, **KIND_DEFAULTS[kind]}


def base_config(kind: str) -> ml_collections.ConfigDict:
  """Every key of the family at paper scale, for `kind` (see KINDS)."""
  config = ml_collections.ConfigDict()
  config.trainer = 'mrigan'
  config.seed = 0
  # 'jit': one jitted step over a device mesh with a 'data' axis (default);
  # 'pmap': the same step under jax.pmap with lax.pmean over the axis.
  config.parallel = 'jit'

  config.data = ml_collections.ConfigDict()
  # 'phantom3d' (built in) or a 3D TFDS builder reading manual_dir:
  # 'iseg2017', 'mrbrains13/tissue', 'mrbrains18/tissue', 'freesurfer_tissue'.
  config.data.name = 'phantom3d'
  config.data.manual_dir = ''
  config.data.data_dir = ''  # where TFDS keeps prepared data; '' = default
  # Comma-separated channels; Mondal et al. use T1 + T2 (iSEG-2017).
  config.data.modalities = 't1,t2'
  # phantom3d only: subjects, voxel size in mm, the phantom's own seed.
  config.data.num_subjects = 10
  config.data.downsample = 2
  config.data.seed = 0
  # >1 cuts every subject into this many slabs along slab_axis, each then a
  # subject of its own (affine shifted, so NIfTI outputs still overlay the
  # original): the only honest split when there is a single labelled volume.
  config.data.slabs = 0
  # >1 coarsens every subject by this integer factor first (block means;
  # majority labels): CPU-sized runs on 1 mm data.
  config.data.block_downsample = 1
  config.data.slab_axis = 0
  # Where the brain is (normalisation statistics, background): 'source'
  # (the dataset's mask, else label > 0) or 'nonzero' (any modality > 0;
  # right for skull-stripped scans whose labels leave brain voxels at 0).
  config.data.brain_mask = 'source'
  # Label-0 voxels inside the brain mask: 'background' (a label like any
  # other) or 'ignore' (no label: out of losses, class weights and
  # metrics). FreeSurfer's aseg labels no sulcal or extra-cerebral CSF:
  # those voxels are 0 ("Unknown"), dark like the ventricles it calls CSF,
  # and a quarter of tissue_t1's skull-stripped brain.
  config.data.unlabelled_in_brain = 'background'
  # The few-shot split (mrseg.data.volumes.few_shot_split): test first, then
  # validation, then labelled; the rest is unlabelled (-1 = all of it).
  # Mondal et al.: 1-2 labelled, 1 validation, the rest test, 12 unlabelled.
  config.data.num_labelled = 2
  config.data.num_validation = 1
  config.data.num_test = 3
  config.data.num_unlabelled = -1
  config.data.split_seed = 0
  config.data.shuffle = True
  # Comma-separated ids of labelled subjects dealt out first (test, then
  # validation, then labelled), before the seeded order; '' = none.
  config.data.split_order = ''
  # Per subject and modality inside the brain mask; 'minmax' maps to [-1, 1]
  # like the generator's tanh (Mondal et al.).
  config.data.normalization = 'minmax'
  config.data.percentiles = ()  # e.g. (0.5, 99.5) clips outliers first
  # Patches (mrseg.data.patches): Mondal et al. take 32^3 patches on a grid
  # of stride 8 with more than 6000 labelled voxels.
  config.data.patch_size = 32
  # True: labelled patches centred on a voxel of CSF, GM, WM in turn, so
  # that every batch of >= 3 holds every tissue, however rare (CSF: 1% of the
  # 3 mm phantom); sampling, stride, min_foreground, foreground_fraction then
  # shape the unlabelled patches only. False: `sampling` for both (Mondal's
  # grid). Off by default: it balances the classes a second time on top of
  # 'frequency' weights (computed on whole volumes), and then CSF is
  # over-predicted (seg3d.py:quick, seed 0: 9.9% of the voxels predicted CSF
  # for 1.05% true, mean Dice 0.475; 0.623 with the grid).
  config.data.class_balanced = False
  config.data.sampling = 'grid'
  config.data.stride = 8
  config.data.min_foreground = 6000
  config.data.foreground_fraction = 0.5  # 'random' sampling only

  # Per-patch augmentation in the train step (mrseg.data.augment_3d; beyond
  # both papers, which augment nothing): random mirroring along the listed
  # spatial axes, e.g. (0,) or (0, 1, 2), and gamma / scale / shift of the
  # brain's intensities; off by default.
  config.augment = ml_collections.ConfigDict()
  config.augment.flip_axes = ()
  config.augment.intensity_scale = 0.0
  config.augment.intensity_shift = 0.0
  config.augment.gamma = 0.0

  config.model = ml_collections.ConfigDict()
  config.model.kind = kind
  config.model.num_classes = 4  # background, CSF, GM, WM (+ implicit fake)
  config.model.dtype = 'float32'  # compute dtype; 'bfloat16' on GPU/TPU
  # Mondal's discriminator = the segmenter of every kind (6.5M parameters).
  d = config.model.discriminator = ml_collections.ConfigDict()
  d.features = (32, 64, 128, 256)
  d.convs_per_level = 2
  d.kernel_size = 3
  d.up_kernel = 2
  d.out_kernel = 3
  d.pool = 'avg'
  d.negative_slope = 0.2
  d.weight_norm = True
  d.dropout_rate = 0.0  # Mondal's TF code has none
  # 'subpixel' is ConvTranspose computed exactly with fast CPU gradients.
  d.upsample = 'subpixel'
  # Convolutions (mrseg.models.convs.CONVS; same parameters and function):
  # 'depth_to_channels' computes each 3D convolution as one 2D convolution,
  # which XLA:CPU runs 1.6-3x faster than its 3D ones ('xla', nn.Conv),
  # strided ones far more; the supervised step ran ~3x faster, 1.18x
  # PyTorch eager's speed (benchmarks/README.md). On a GPU pick 'xla'.
  d.conv = 'depth_to_channels'
  d.weight_init = 'normal_0.05'
  # 'fewshot_gan': Mondal's generator, z -> 32^3 patch (base size = patch/16).
  ng = config.model.noise_generator = ml_collections.ConfigDict()
  ng.noise_dim = 200
  ng.base_features = 512
  ng.up_features = (256, 128, 64)
  ng.up_kernel = 2
  ng.norm = 'batch'
  ng.bn_momentum = 0.9
  ng.weight_norm_output = True
  ng.upsample = 'subpixel'
  ng.weight_init = 'normal_0.05'
  # 'mrigan': paper 2's generator
  # (mrseg.models.mrigan_generator.MRIGANGenerator).
  # Ablations: fusion='concat' ("without GT-layers"), use_boundary=False,
  # and the noise-only generator (use_mri_encoder=False,
  # use_tissue_encoder=False, use_boundary=False, fusion='none',
  # noise_dim=200).
  g = config.model.generator = ml_collections.ConfigDict()
  g.features = (32, 64, 128, 256)
  g.tissue_features = (16, 32, 64, 128)
  g.code_dim = 128
  # 'global': AdaIN GT-layers on a pooled code (the paper's reading);
  # 'spatial': a code map at the latent resolution; 'spade': SPADE
  # GT-layers (Park et al. 2019) whose per-voxel R_sigma, R_mu are convs of
  # the tissue map itself, at the latent and at every decoder resolution
  # (mrseg.models.mrigan_blocks.SpadeLayer, gt_mlp_features hidden channels;
  # beyond the paper).
  g.tissue_code = 'global'
  g.use_mri_encoder = True
  g.use_tissue_encoder = True
  g.fusion = 'gt'
  g.num_gt_blocks = 2
  g.gt_mlp_layers = 2
  g.gt_mlp_features = 256
  g.use_boundary = True
  g.boundary_width = 0.5
  g.noise_dim = 0
  g.norm = 'batch'
  g.bn_momentum = 0.9
  g.negative_slope = 0.2
  g.up_kernel = 2
  g.upsample = 'subpixel'
  g.conv = 'depth_to_channels'  # as model.discriminator.conv
  g.weight_init = 'he_normal'

  config.loss = ml_collections.ConfigDict()
  # Labelled term: class-weighted CE over the K real classes, mean over
  # voxels (Mondal's). Weights of background, CSF, GM, WM:
  # 'frequency': median-frequency balancing (Eigen & Fergus 2015) of the
  #   labelled training subjects: w_c = median(f) / f_c, f_c the share of
  #   class c among their voxels (label 255 not counted, background counted,
  #   as in the loss). Mondal's iSEG weights leave CSF, 1% of the 3 mm
  #   phantom, unpredicted (Dice 0); f = (0.68, 0.011, 0.20, 0.10) there
  #   gives w = (0.22, 14.2, 0.75, 1.48).
  # 'mondal': Mondal et al.'s (0.33, 1.5, 0.83, 1.33); or K numbers, e.g.
  #   (1, 10, 1, 1); () = unweighted. A run logs the counts and weights and
  #   writes them to class_weights.json and metrics.json.
  # (An object field: it holds a name or a tuple.)
  config.loss.class_weights = ml_collections.FieldReference(
      'frequency', field_type=object)
  config.loss.ce_normalize = 'voxels'
  # 'ce': the weighted CE alone (Mondal); 'dice_ce': CE + dice_weight * the
  # soft Dice of the global batch (nnU-Net's loss), whose per-class ratio
  # rewards a rare class as much as a common one.
  config.loss.labelled_loss = 'ce'
  config.loss.dice_weight = 1.0
  # False: the Dice term averages CSF, GM and WM only (what Dice measures).
  config.loss.dice_include_background = False
  config.loss.ignore_label = 255
  # D = lambda_l l_labelled + lambda_u l_unlabelled + lambda_f l_fake.
  config.loss.labelled_weight = 1.0
  config.loss.unlabelled_weight = 1.0
  config.loss.fake_weight = 2.0
  # Warm-up of lambda_u and lambda_f over the first T steps with Laine &
  # Aila's (temporal ensembling) sigmoid-shaped ramp exp(-5 (1 - t/T)^2):
  # 0.007 at step 0, 0.29 at T/2, 1 from T on (mrseg.losses.sigmoid_rampup);
  # 0 = off. Why: with 1 / 1 / 2 the unlabelled + fake gradient on D is
  # 3.3x the labelled one at initialisation (issue 12); under this ramp it
  # stays below the labelled one until about T/2 (3.3 x 0.29 = 0.95), where
  # a linear ramp would reach it at 0.3 T.
  config.loss.unsupervised_warmup_steps = 0
  # Beyond the paper ('mrigan'): tissue transfer as labelled data. The
  # generated patches G(x_u, y), labelled with the tissue maps y that
  # conditioned them, join D's labelled term (same loss and class weights;
  # no gradient to G) with this weight from transfer_start_step on (early
  # fakes are noise); 0 = off (the paper). l_fake still calls them fake: the
  # labelled CE is over the K real classes, so it only teaches D which
  # tissue a voxel of a fake is. Needs model.generator.use_tissue_encoder.
  config.loss.transfer_weight = 0.0
  config.loss.transfer_start_step = 0
  # Generator: feature matching at D's first 256-channel bottleneck layer
  # ('feature_matching', the default), or paper 2's eq. (7)-(8) as printed
  # ('paper_eq7_8', mrseg.losses.paper_eq7_8_loss):
  #   (7) C = E f(x) - log(1 - D(G(z))),   (8) L(G) = ||C - x||^2,
  # read with f = D's features at that layer, E f(x) their batch mean over
  # the real unlabelled patches, log(1 - D(G(z))) per voxel of the fake
  # (D(G(z)) = Z / (Z + 1)) averaged over each cell of f's grid and added to
  # every channel, x = f(x_j) of the real patch whose MRI made fake j, and
  # ||.||^2 a mean over entries. Only D(G(z)) depends on G, and on average
  # the loss pulls it to 0 (fakes D rejects): feature matching, which the
  # paper's text names, stays the default. feature_matching_weight weighs
  # either objective.
  config.loss.generator_objective = 'feature_matching'
  config.loss.feature_matching = 'l2'
  config.loss.feature_matching_weight = 1.0
  # False: batch means per voxel and channel (Mondal's code); True: means
  # over the spatial axes as well (Salimans et al.'s per-channel form).
  config.loss.feature_matching_spatial_mean = False
  # 'mrigan': BCE of the boundary network against label-derived boundaries.
  config.loss.boundary_weight = 1.0
  config.loss.boundary_pos_weight = 0.0  # 0: unweighted BCE

  config.optim = ml_collections.ConfigDict()
  # Mondal et al.: Adam, learning rate 1e-4, beta1 0.5, for both networks.
  config.optim.d_learning_rate = 1e-4
  config.optim.g_learning_rate = 1e-4
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8

  # Per step: labelled patches (Mondal: 30), unlabelled patches (also the
  # number generated; a multiple of batch_size, so that for 'mrigan' each
  # labelled patch's tissue map conditions the same number of fakes).
  config.batch_size = 30
  config.unlabelled_batch_size = 30
  config.num_train_steps = 20000

  config.log_every_steps = 50
  config.eval_every_steps = 1000  # validation Dice; the best is kept
  # Early stop at a plateau of validation mean Dice (the best checkpoint's
  # metric): after this many validations in a row that did not beat the last
  # improvement by more than early_stop_min_delta; 0 = never (train
  # num_train_steps). The step it stopped at: metrics.json stopped_early_at.
  # The GAN kinds' validations inside loss.unsupervised_warmup_steps are not
  # judged (the objective still changes there); they may still be the best.
  config.early_stop_patience = 0
  config.early_stop_min_delta = 0.0
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3

  config.eval = ml_collections.ConfigDict()
  config.eval.after_training = True  # evaluate the best checkpoint on test
  # Sliding windows of the patch size; probabilities averaged with Gaussian
  # weights (not Mondal's averaging of integer labels).
  config.eval.overlap = 0.5
  # The segmenter is fully convolutional: windows may be larger than the
  # training patch (0 = the patch size; must be divisible like it).
  config.eval.window_size = 0
  config.eval.weighting = 'gaussian'
  config.eval.window_batch_size = 8
  config.eval.hd95_empty_value = 'inf'
  # Predictions outside data.brain_mask set to background (validation and
  # test). Off: the tables score what the segmenter says everywhere. On
  # skull-stripped scans (tissue_t1's 'nonzero' mask) nothing outside the
  # mask is tissue.
  config.eval.restrict_to_brain = False
  config.eval.write_nifti = True
  config.eval.num_figure_patches = 8  # generated vs real patches figure

  for key, value in kind_overrides(kind).items():
    overrides.set_dotted(config, key, value)
  return config


def apply_variants(config: ml_collections.ConfigDict,
                   variants: list[str]) -> ml_collections.ConfigDict:
  """Applies 'quick', 'test' and 'tissue_t1' (see the module docstring).

  `variants` come from `overrides.variants(arg, VARIANTS, ...)`, which
  refuses other names.
  """
  if 'quick' in variants:
    # A 2-core CPU's budget (3D convolutions are slow there): 3 mm
    # phantom, 16^3 patches, 3-level networks of a few features; 3000 steps
    # (1-3 minutes supervised, 10-15 minutes for the GANs) with a stop at a
    # validation plateau. Why 3000: seed 0's learning curves (README, "Paper
    # 2's protocol"): 100 steps (this variant before) is the steep start,
    # where validation Dice moves by 0.1 between evaluations; supervised
    # training gains ~0.04 from 3000 to 6000 steps, MRI-GAN's 5x slower
    # step is what caps the budget. Two validation subjects (11 phantom
    # subjects: 3 test, 2 validation, 2 labelled, 4 unlabelled) halve the
    # noise of the checkpoint choice.
    config.data.num_subjects = 11
    config.data.num_validation = 2
    config.data.downsample = 3
    config.data.patch_size = 16
    config.data.min_foreground = 500
    config.model.discriminator.features = (8, 16, 32)
    ng = config.model.noise_generator
    ng.noise_dim = 64
    ng.base_features = 32
    ng.up_features = (16, 8)
    g = config.model.generator
    g.features = (8, 16, 32)
    g.tissue_features = (4, 8, 16)
    g.code_dim = 32
    g.gt_mlp_features = 64
    config.optim.d_learning_rate = 5e-4
    config.optim.g_learning_rate = 5e-4
    config.batch_size = 4
    config.unlabelled_batch_size = 4
    config.num_train_steps = 3000
    config.log_every_steps = 50
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 500
    config.early_stop_patience = 6
    config.early_stop_min_delta = 0.005
  if 'tissue_t1' in variants:
    # One real 1 mm T1 with FreeSurfer labels, cut into 5 sagittal slabs:
    # 1 test, 1 validation, 2 labelled, 1 unlabelled. aseg labels CSF in the
    # ventricles only, so the lateral slabs 0 and 4 hold none (0.0% of their
    # brain voxels; slabs 1-3: 1.1%, 2.8%, 1.1%): validating or testing on
    # them scores CSF 0 for any false positive. So: test on slab 1, validate
    # on its mirror image slab 3 (the same tissue mix, so validation
    # predicts test), train on the medial slab 2 (every tissue, the most
    # CSF) and the lateral slab 4 (lateral cortex: trained on slab 2 alone,
    # seg3d.py:quick,tissue_t1 seed 0 called 58% of slab 1's GM WM, test
    # Dice GM 0.34); slab 0 unlabelled. Chosen from label counts and that
    # one failure, not from test scores of the other splits.
    config.data.num_labelled = 2
    config.data.split_order = ('subject01-slab1,subject01-slab3,'
                               'subject01-slab2,subject01-slab4')
    config.data.name = 'freesurfer_tissue'
    config.data.modalities = 't1'
    config.data.slabs = 5
    config.data.slab_axis = 0
    config.data.brain_mask = 'nonzero'
    config.data.num_validation = 1
    config.data.num_test = 1
    # Whole slabs: larger windows, less overlap, to keep CPU time low.
    config.eval.window_size = 48
    config.eval.overlap = 0.25
    if 'quick' in variants:
      # 2 mm (block means, majority labels), like the 3 mm phantom of
      # 'quick': a 16^3 patch then sees 32 mm of anatomy, not 16.
      config.data.block_downsample = 2
      config.eval.window_size = 32
  if 'test' in variants:
    # Seconds: 16^3 patches, 3-level networks of a few features.
    config.data.num_subjects = 5
    config.data.downsample = 3
    config.data.num_labelled = 2
    config.data.num_validation = 1
    config.data.num_test = 1
    config.data.patch_size = 16
    config.data.stride = 16
    config.data.min_foreground = 500
    config.model.discriminator.features = (4, 8, 16)
    ng = config.model.noise_generator
    ng.noise_dim = 8
    ng.base_features = 8
    ng.up_features = (8, 4)
    g = config.model.generator
    g.features = (4, 8, 16)
    g.tissue_features = (4, 4, 8)
    g.code_dim = 8
    g.gt_mlp_features = 8
    g.num_gt_blocks = 1
    config.batch_size = 4
    config.unlabelled_batch_size = 4
    config.num_train_steps = 3
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval.overlap = 0.0
    config.eval.window_size = 32
    config.eval.window_batch_size = 4
    config.eval.num_figure_patches = 4
  return config


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """A kind name ('mrigan' if none) plus variants, e.g. 'fewshot_gan,quick'."""
  parts = overrides.variants(arg, KINDS + VARIANTS, 'configs/tissue_base.py')
  kinds = [p for p in parts if p in KINDS]
  if len(kinds) > 1:
    raise ValueError(f'Give at most one kind of {KINDS}; got {kinds}.')
  config = base_config(kinds[0] if kinds else 'mrigan')
  return apply_variants(config, [p for p in parts if p not in KINDS])


# paired.md: both GANs against supervised-only training at the same seed.
SWEEP_BASELINES = [kind_overrides('supervised')]


def sweep(add):
  """The comparison: supervised-only vs Standard-GAN vs MRI-GAN, 3 seeds."""
  # Seed-major, so that a stopped sweep has every model for the first seeds.
  for seed in (0, 1, 2):
    for kind in KINDS:
      add(**kind_overrides(kind), seed=seed)
