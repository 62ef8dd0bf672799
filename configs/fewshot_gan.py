r"""Mondal et al. 2018's few-shot 3D GAN ("Standard-GAN" in paper 2).

A noise generator (z ~ U(-1, 1)^200 -> a 32^3 patch) and Mondal's 3D UNet
discriminator with K real classes and an implicit fake class, trained on
labelled + 0.5 unlabelled + 0.5 fake (their code's weights), the generator
by L1 feature matching. Keys and data options: configs/tissue_base.py.

  python launch.py --config=configs/fewshot_gan.py --workdir=runs/fewshot
  python launch.py --config=configs/fewshot_gan.py:quick \
    --workdir=runs/fewshot_quick
  # T1 only, on FreeSurfer-labelled volumes:
  python launch.py --config=configs/fewshot_gan.py:quick \
    --workdir=runs/fewshot_fs --config.data.name=freesurfer_tissue \
    --config.data.manual_dir=/path/to/subjects --config.data.modalities=t1
  # Its sweep: Mondal's weights vs paper 2's (1 / 1 / 2, squared L2), 3 seeds.
  python launch.py --config=configs/fewshot_gan.py:quick \
    --workdir=runs/fewshot_sweep --mode=sweep

Outputs as configs/mrigan.py describes.
"""
import ml_collections

from configs import tissue_base as base
from mrseg import overrides


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Mondal's Standard-GAN; variants 'quick', 'test', 'tissue_t1'."""
  return base.apply_variants(
      base.base_config('fewshot_gan'),
      overrides.variants(arg, base.VARIANTS, 'configs/fewshot_gan.py'))


def sweep(add):
  """Loss weights: Mondal's code vs paper 2's, 3 seeds each."""
  for weights in ({}, {'loss.unlabelled_weight': 1.0, 'loss.fake_weight': 2.0,
                       'loss.feature_matching': 'l2'}):
    for seed in (0, 1, 2):
      add(**weights, seed=seed)
