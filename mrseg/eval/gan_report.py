"""The 2D GANs' after-training report: metrics.json and two figures.

Shared by dcgan_trainer and cgan_trainer: paper 1's Fig. 10 (the loss
curves) and Fig. 11 (real vs generated intensity histograms), the same
comparison as numbers (`fidelity.fidelity_report`), and the last logged
training metrics. Every process computes the report (the same numbers);
process 0 writes it.
"""
import os
from typing import Sequence

from absl import logging
import numpy as np

from mrseg import fidelity
from mrseg import viz
from mrseg import workdir as workdir_lib


def write_gan_report(workdir: str, step: int, real: np.ndarray,
                     fake: np.ndarray, history_path: str, seed: int,
                     loss_keys: Sequence[str], title: str
                     ) -> dict[str, float]:
  """Writes figures/losses.png, figures/intensity_distribution.png and
  metrics.json for generated images `fake` against `real` ([N, H, W, 1]
  in [0, 1]); returns the metrics.

  Args:
    workdir: the run's folder.
    step: the final training step.
    real: the real training images.
    fake: generated images (image channels only).
    history_path: the run's history.jsonl (`loop` records).
    seed: seed of fidelity_report's pair draws (config.seed).
    loss_keys: history keys to plot as loss curves.
    title: the loss plot's title.
  """
  # pylint: disable=g-import-not-at-top
  from mrseg.train import logs  # clu's writers load TensorFlow.
  # pylint: enable=g-import-not-at-top
  records = logs.read_history(history_path)
  # Intensity distances (Fig. 11 as numbers) and MS-SSIM diversity (lower =
  # more diverse; compare the fake value with the real one).
  metrics = {'step': int(step)}
  metrics.update(fidelity.fidelity_report(real, fake, num_pairs=500,
                                          seed=seed))
  if records:
    metrics.update({k: v for k, v in records[-1].items() if k != 'step'})
  if workdir_lib.is_main_process():
    viz.plot_losses(records, os.path.join(workdir, 'figures', 'losses.png'),
                    keys=tuple(loss_keys), title=title)
    viz.plot_intensity_distributions(
        real, fake,
        os.path.join(workdir, 'figures', 'intensity_distribution.png'))
    workdir_lib.write_json(os.path.join(workdir, 'metrics.json'), metrics)
  logging.info('Final metrics: %s', metrics)
  return metrics
