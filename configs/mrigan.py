r"""Paper 2 (Khaled, MRI-GAN): semi-supervised 3D CSF/GM/WM segmentation.

The generator encodes an unlabelled MRI patch and a labelled patch's tissue
map, injects the tissue code with GT-layers, predicts tissue boundaries and
decodes a synthetic patch; the discriminator (Mondal's 3D UNet, the
segmenter) learns from labelled, unlabelled and generated patches with the
paper's weights 1.0 / 1.0 / 2.0. Keys and data options: configs/tissue_base.py.

  # Paper scale on the built-in 3D phantom (T1 + T2):
  python launch.py --config=configs/mrigan.py --workdir=runs/mrigan
  # The CPU protocol (3000 steps or a validation plateau; ~15 minutes):
  python launch.py --config=configs/mrigan.py:quick --workdir=runs/mrigan_quick
  # iSEG-2017 (T1 + T2), Mondal's split sizes:
  python launch.py --config=configs/mrigan.py --workdir=runs/mrigan_iseg \
    --config.data.name=iseg2017 --config.data.manual_dir=/path/to/iSeg-2017
  # Ablations are overrides, e.g. "without GT-layers":
  python launch.py --config=configs/mrigan.py:quick --workdir=runs/no_gt \
    --config.model.generator.fusion=concat
  # Re-evaluate the best checkpoint on the test subjects:
  python launch.py --config=configs/mrigan.py:quick \
    --workdir=runs/mrigan_quick --mode=eval
  # The ablation sweep (9 settings x 3 seeds) -> results.md:
  python launch.py --config=configs/mrigan.py:quick --workdir=runs/ablate \
    --mode=sweep

A run writes config.json, class_weights.json (the labelled voxels per class
and the loss's class weights), TensorBoard events, history.jsonl, checkpoints/,
best/ (best validation Dice), best.json, metrics.json (pooled and
per-subject Dice and HD95 on the test subjects), per_subject.csv,
predictions/<id>.nii.gz (with the input's affine), figures/segmentation.png
(T1 / truth / prediction), figures/generated_patches.png (real vs generated),
figures/losses.png and figures/val_dice.png.
"""
import ml_collections

from configs import tissue_base as base
from mrseg import overrides


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The paper's MRI-GAN; variants 'quick', 'test', 'tissue_t1'."""
  return base.apply_variants(
      base.base_config('mrigan'),
      overrides.variants(arg, base.VARIANTS, 'configs/mrigan.py'))


# paired.md: each ablation against the paper's model at the same seed.
SWEEP_BASELINES = [{}]


def sweep(add):
  """Paper 2's ablations of its generator and loss, 3 seeds each.

  The paper's own (no GT-layers, no boundary network, Mondal's weights, a
  noise-only generator), then readings and extensions: eq. (7)-(8) as
  printed, a warm-up of D's unsupervised terms, tissue transfer as labelled
  data and SPADE GT-layers. Step counts are sized for ':quick' (3000
  steps): a quarter of training, like Laine & Aila's 80 of 300 epochs;
  scale them with num_train_steps.
  """
  quarter = 750
  ablations = {
      'paper': {},
      'no_gt_layers': {'model.generator.fusion': 'concat'},
      'no_boundary': {'model.generator.use_boundary': False},
      'mondal_weights': {'loss.unlabelled_weight': 0.5,
                         'loss.fake_weight': 0.5,
                         'loss.feature_matching': 'l1'},
      'noise_only': {'model.generator.use_mri_encoder': False,
                     'model.generator.use_tissue_encoder': False,
                     'model.generator.use_boundary': False,
                     'model.generator.fusion': 'none',
                     'model.generator.noise_dim': 200},
      'paper_eq7_8': {'loss.generator_objective': 'paper_eq7_8'},
      'unsupervised_warmup': {'loss.unsupervised_warmup_steps': quarter},
      # Half the real labelled term's weight: fakes only approximate MRI.
      'tissue_transfer': {'loss.transfer_weight': 0.5,
                          'loss.transfer_start_step': quarter},
      'spade': {'model.generator.tissue_code': 'spade'},
  }
  for ablation in ablations.values():
    for seed in (0, 1, 2):
      add(**ablation, seed=seed)
