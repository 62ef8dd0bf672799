r"""Supervised-only baseline: Mondal's 3D UNet segmenter, labelled patches only.

The same network as the GANs' discriminator (configs/mrigan.py,
configs/fewshot_gan.py), trained with the class-weighted cross-entropy on
the labelled patches alone, so a Dice difference measures what unlabelled
and generated data add. Keys and data options: configs/tissue_base.py.

  python launch.py --config=configs/seg3d.py --workdir=runs/seg3d
  python launch.py --config=configs/seg3d.py:quick --workdir=runs/seg3d_quick
  # Its sweep: 1 vs 2 labelled subjects, 3 seeds each.
  python launch.py --config=configs/seg3d.py:quick --workdir=runs/seg3d_sweep \
    --mode=sweep

Outputs as configs/mrigan.py describes (no generated-patch figure).
"""
import ml_collections

from configs import tissue_base as base
from mrseg import overrides


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The supervised-only 3D UNet; variants 'quick', 'test', 'tissue_t1'."""
  return base.apply_variants(
      base.base_config('supervised'),
      overrides.variants(arg, base.VARIANTS, 'configs/seg3d.py'))


def sweep(add):
  """Labelled subjects 1 and 2 (Mondal's few-shot settings), 3 seeds each."""
  for num_labelled in (1, 2):
    for seed in (0, 1, 2):
      add(**{'data.num_labelled': num_labelled}, seed=seed)
