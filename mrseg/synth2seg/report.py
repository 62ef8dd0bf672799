"""The pipeline's summary: metrics.json's flat numbers and report.md."""
import os
from typing import Any

import ml_collections
import numpy as np

from mrseg import quality
from mrseg import workdir as workdir_lib
from mrseg.synth2seg import pairs as pairs_lib


def summarize(config: ml_collections.ConfigDict, paths: dict[str, str]
              ) -> dict[str, Any]:
  """The numbers of the run, flat, for report.md and sweep tables."""
  test = workdir_lib.read_json(os.path.join(paths['unet'], 'metrics.json'))
  pooled, per_case, table = test['pooled'], test['per_case'], test['table_iii']
  summary = {
      'test_dice': pooled.get('dice/tumor', pooled['mean_dice']),
      'test_iou': pooled.get('iou/tumor', pooled['mean_iou']),
      'test_accuracy': pooled['accuracy'],
      'test_case_dice_mean': per_case.get('dice/tumor/mean'),
      'test_hd95_median': per_case.get('hd95/tumor/median'),
      'test_hd95_inf_cases': per_case.get('hd95/tumor/n_inf'),
      'table_iii_correct': table['correct'],
      'table_iii_incorrect': table['incorrect'],
      'num_test_cases': test['num_cases'],
  }
  if config.train_data != 'real' and pairs_lib.stage_done(paths['reference']):
    ref = workdir_lib.read_json(
        os.path.join(paths['reference'], 'metrics.json'))['pooled']
    summary['reference_test_dice'] = ref.get('dice/tumor', ref['mean_dice'])
    summary['dice_ratio_to_real'] = (
        summary['test_dice'] / summary['reference_test_dice']
        if summary['reference_test_dice'] else None)
  if config.train_data != 'real' and os.path.exists(paths['checks']):
    checks = workdir_lib.read_json(paths['checks'])
    summary.update({f'synthetic_{k}': v for k, v in checks.items()
                    if k != 'selection'})
  elif config.train_data != 'real' and os.path.exists(pairs_lib.synthetic_npz(config, paths)):
    with np.load(pairs_lib.synthetic_npz(config, paths)) as npz:
      summary['synthetic_empty_masks'] = quality.empty_masks(npz['mask'])
      summary['synthetic_mask_fraction'] = float(npz['mask'].mean())
  if os.path.exists(paths['fidelity']):
    fid = workdir_lib.read_json(paths['fidelity'])
    summary.update({k: fid[k] for k in ('fid', 'kid_mean', 'kid_std',
                                        'intensity_wasserstein',
                                        'ms_ssim_diversity_fake',
                                        'ms_ssim_diversity_real',
                                        'features') if k in fid})
  return summary


def _fmt(v: Any) -> str:
  return 'n/a' if v is None else (f'{v:.4g}' if isinstance(v, float) else str(v))


def _setting_lines(config: ml_collections.ConfigDict, paths: dict[str, str],
                   summary: dict[str, Any]) -> list[str]:
  """The report's setting, its test metrics and the ratio to real data."""
  needs_gan = config.train_data != 'real'
  lines = [
      '# Synthesize, then segment (paper 1)', '',
      f'- data: `{config.data.name}`'
      f'{" (" + config.data.manual_dir + ")" if config.data.manual_dir else ""}, '
      f'{config.data.image_size}x{config.data.image_size}; train ids '
      f'`{config.data.train_ids}`, validation `{config.data.val_ids}`, test '
      f'`{config.data.test_ids}` (real images)',
      f'- UNet trained on: **{config.train_data}**'
      + (f' ({config.num_synthetic} pairs from a `{config.gan_type}` GAN)'
         if needs_gan else '')
      + (' with classical augmentation' if config.augmentation == 'classical'
         else ''),
      f'- seed: {config.seed}', '',
      '## Test metrics (real test images)', '',
      '| metric | value |', '|---|---|',
      f'| Dice (tumour, pooled over pixels) | {_fmt(summary["test_dice"])} |',
      f'| IoU (tumour, pooled) | {_fmt(summary["test_iou"])} |',
      f'| pixel accuracy | {_fmt(summary["test_accuracy"])} |',
      f'| Dice per case, mean | {_fmt(summary["test_case_dice_mean"])} |',
      f'| HD95 per case, median (pixels) | {_fmt(summary["test_hd95_median"])} |',
      f'| cases with HD95 = inf (tumour missed or hallucinated) | '
      f'{_fmt(summary["test_hd95_inf_cases"])} |',
      f'| Table III: correctly / incorrectly segmented (Dice >= '
      f'{config.unet.eval.correct_threshold}) | {summary["table_iii_correct"]}'
      f' / {summary["table_iii_incorrect"]} of {summary["num_test_cases"]} |',
      '',
  ]
  if 'reference_test_dice' in summary:
    ratio = summary.get('dice_ratio_to_real')
    lines += [
        f'The same UNet budget on the real training pairs (the reference run, '
        f'`{os.path.relpath(paths["reference"], os.path.dirname(paths["report"]))}`) '
        f'reaches a pooled test Dice of {_fmt(summary["reference_test_dice"])}: '
        f'this run reaches **{_fmt(ratio)}x** of it.', '']
  return lines


def _check_lines(config: ml_collections.ConfigDict,
                 summary: dict[str, Any]) -> list[str]:
  """The checks of the synthetic pairs and their fidelity, if measured."""
  lines = []
  if 'synthetic_alignment_dice' in summary:
    lines += [
        '## Checks of the synthetic pairs (before the UNet)', '',
        '| check | value |', '|---|---|',
        f'| empty masks | {summary["synthetic_empty_masks"]} of '
        f'{summary["synthetic_num_pairs"]} (gate: <= '
        f'{config.gates.max_empty_fraction:.0%}) |',
        f'| alignment: the reference UNet\'s pooled Dice against the synthetic '
        f'masks | {_fmt(summary["synthetic_alignment_dice"])} (gate: >= '
        f'{config.gates.min_alignment_dice}) |',
        f'| alignment: share of synthetic tumours it finds | '
        f'{_fmt(summary["synthetic_alignment_detected"])} |',
        f'| memorisation: median distance to the nearest real training image,'
        f' synthetic / real-to-real (RMS, [0, 1] intensities) | '
        f'{_fmt(summary["synthetic_nn_distance_fake"])} / '
        f'{_fmt(summary["synthetic_nn_distance_real"])} (ratio '
        f'{_fmt(summary["synthetic_memorisation_ratio"])}) |',
        *_kept_lines(summary),
        f'| GAN checkpoint used (best alignment of '
        f'{config.selection_pairs} pairs per checkpoint) | step '
        f'{summary["synthetic_selected_step"]} |', '']
  elif summary.get('synthetic_empty_masks'):
    lines += [
        f'**Note:** {summary["synthetic_empty_masks"]} of '
        f'{config.num_synthetic} synthetic masks are empty: those pairs teach '
        'the UNet that their images hold no tumour.', '']
  if 'fid' in summary:
    lines += [
        '## Fidelity of the synthetic images', '',
        f'FID/KID use the {summary.get("features", "UNet bottleneck")}, '
        'standardised by the real features\' mean and spread, not Inception: '
        'compare them only between runs scored by the same network '
        '(`fidelity_unet_dir`).', '',
        '| metric | value |', '|---|---|',
        f'| intensity Wasserstein-1 (real vs synthetic) | '
        f'{_fmt(summary.get("intensity_wasserstein"))} |',
        f'| FID (UNet features) | {_fmt(summary.get("fid"))} |',
        f'| KID x 1000 (UNet features) | '
        f'{_fmt(1000 * summary["kid_mean"])} ± {_fmt(1000 * summary["kid_std"])} |',
        f'| MS-SSIM among synthetic / among real (lower = more diverse) | '
        f'{_fmt(summary.get("ms_ssim_diversity_fake"))} / '
        f'{_fmt(summary.get("ms_ssim_diversity_real"))} |', '']
  return lines


def _kept_lines(summary: dict[str, Any]) -> list[str]:
  """Rows for `keep_best_of`: what was drawn, and the cut."""
  if not summary.get('synthetic_keep_best_of'):
    return []
  return [
      f'| kept: the best {summary["synthetic_num_pairs"]} of '
      f'{summary["synthetic_drawn_pairs"]} drawn pairs by the reference UNet\'s '
      f'Dice (the rows above are of the kept pairs) | pair Dice >= '
      f'{_fmt(summary["synthetic_kept_min_pair_dice"])} |',
      f'| all drawn pairs: alignment Dice (the gate\'s number) / empty masks | '
      f'{_fmt(summary["synthetic_drawn_alignment_dice"])} / '
      f'{summary["synthetic_drawn_empty_fraction"]:.0%} |']


def _figure_lines(config: ml_collections.ConfigDict,
                  paths: dict[str, str]) -> list[str]:
  """Links to the GAN's and the UNet's figures."""
  needs_gan = config.train_data != 'real'
  lines = []
  lines += ['## Figures', '']
  if needs_gan:
    gan = os.path.relpath(paths['gan'], os.path.dirname(paths['report']))
    lines += [
        f'- GAN losses (paper Fig. 10): ![]({gan}/figures/losses.png)',
        '- Real vs generated intensities (paper Fig. 11): '
        f'![]({gan}/figures/intensity_distribution.png)',
    ]
    if os.path.exists(os.path.join(paths['synthetic'], 'pairs_grid.png')):
      lines.append('- Synthetic image/mask pairs (mask tinted red): '
                   '![](synthetic/pairs_grid.png)')
    if os.path.exists(os.path.join(paths['synthetic'], 'provenance.csv')):
      lines.append('- Where each synthetic mask came from (host slice, '
                   'source mask, transform): `synthetic/provenance.csv`')
  lines += [
      '- UNet loss (paper Fig. 13): ![](unet/figures/loss.png)',
      '- UNet accuracy (paper Fig. 14): ![](unet/figures/accuracy.png)',
      '- Test predictions, best / median / worst case: '
      '![](unet/figures/overlays.png)', '',
      'Per-case metrics: `unet/per_case.csv`; all test metrics: '
      '`unet/metrics.json`.', '']
  return lines


def write_report(config: ml_collections.ConfigDict, paths: dict[str, str],
                 summary: dict[str, Any]) -> None:
  """report.md: the setting, the metrics table and the figures."""
  lines = (_setting_lines(config, paths, summary)
           + _check_lines(config, summary) + _figure_lines(config, paths))
  workdir_lib.write_text(paths['report'], '\n'.join(lines))
