"""Figures a user looks at: sample grids, loss curves, intensity histograms."""
from collections.abc import Mapping, Sequence
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from mrseg import workdir as workdir_lib


def image_grid(images: np.ndarray, columns: int | None = None,
               padding: int = 2) -> np.ndarray:
  """Tiles images [N, H, W, C] in [0, 1] into one uint8 image [h, w, C]."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f'image_grid needs [N, H, W, C], got shape {images.shape}')
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.zeros((rows * (h + padding) + padding,
                   columns * (w + padding) + padding, c), np.float32)
  for i in range(n):
    r, col = divmod(i, columns)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = images[i]
  return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path: str) -> None:
  """Writes uint8 [H, W], [H, W, 1] or [H, W, 3] as PNG, creating folders."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  with workdir_lib.atomic_open(path, 'wb') as f:
    Image.fromarray(image).save(f, format='PNG')


def plot_losses(history: Sequence[Mapping[str, float]], path: str,
                keys: Sequence[str], title: str = 'Training losses',
                ylabel: str = 'loss') -> None:
  """Curves of `keys` against step from history records (paper 1, Fig. 10).

  Also draws any other per-step scalar, e.g. accuracy (paper 1, Fig. 14)
  with `ylabel='accuracy'`; records without a key are skipped for that key,
  so training and validation records (logged at different steps) share one
  plot.
  """
  fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
  for key in keys:
    points = [(r['step'], r[key]) for r in history if key in r]
    if points:
      steps, values = zip(*points)
      ax.plot(steps, values, label=key)
  ax.set_xlabel('step')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path)


def plot_intensity_distributions(real: np.ndarray, generated: np.ndarray,
                                 path: str, bins: int = 64,
                                 title: str = 'Pixel intensity distribution'
                                 ) -> None:
  """Histograms of real and generated intensities in [0, 1] (paper 1, Fig. 11)."""
  fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
  edges = np.linspace(0.0, 1.0, bins + 1)
  for data, label in ((real, 'real'), (generated, 'generated')):
    ax.hist(np.ravel(data), bins=edges, density=True, histtype='step',
            linewidth=1.5, label=f'{label} ({len(data)} images)')
  ax.set_yscale('log')
  ax.set_xlabel('intensity')
  ax.set_ylabel('density')
  ax.set_title(title)
  ax.legend()
  _save(fig, path)


def plot_segmentation_overlays(
    images: np.ndarray, truths: np.ndarray, predictions: np.ndarray,
    path: str, row_titles: Sequence[str] | None = None,
    title: str = 'Segmentation') -> None:
  """Rows of image | truth | prediction, masks drawn over the image.

  Args:
    images: [N, H, W] or [N, H, W, 1] intensities in [0, 1].
    truths: [N, H, W] integer labels (0 background).
    predictions: [N, H, W] integer labels.
    path: the PNG to write.
    row_titles: one label per row (e.g. 'best: id 12, Dice 0.91').
    title: the figure's title.
  """
  images = np.asarray(images, np.float32)
  if images.ndim == 4:
    images = images[..., 0]
  n = len(images)
  fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n + 0.4), dpi=120,
                           squeeze=False)
  for i in range(n):
    panels = (('image', None), ('truth', truths[i]),
              ('prediction', predictions[i]))
    for j, (name, labels) in enumerate(panels):
      ax = axes[i, j]
      ax.imshow(images[i], cmap='gray', vmin=0.0, vmax=1.0)
      if labels is not None:
        labels = np.asarray(labels)
        # Masked, so the background shows the image unchanged.
        ax.imshow(np.ma.masked_equal(labels, 0), cmap='autumn', alpha=0.45,
                  vmin=1, vmax=max(int(labels.max()), 1),
                  interpolation='nearest')
        if labels.any():
          ax.contour(labels > 0, levels=[0.5], colors='yellow',
                     linewidths=0.8)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(name)
      if j == 0 and row_titles is not None:
        ax.set_ylabel(row_titles[i], fontsize=8)
  fig.suptitle(title)
  _save(fig, path)


def plot_curves(history: Sequence[Mapping[str, float]], folder: str,
                curves: Mapping[str, Mapping[str, object]]) -> None:
  """One `plot_losses` figure per entry: {'loss.png': {'keys': ..., ...}}."""
  for name, options in curves.items():
    plot_losses(history, os.path.join(folder, name), **options)


def plot_bands(panels: Mapping[str, Mapping[str, Sequence[tuple]]],
               path: str, title: str = '') -> None:
  """Panels of lines with bands: {panel: {line: [(x, mean, std), ...]}}.

  A NaN std (one seed) draws no band at that point. The legend goes below
  the panels (a sweep's line names are long and many), one line per entry.
  """
  num_lines = max((len(lines) for lines in panels.values()), default=0)
  legend_height = 0.14 * num_lines + 0.2
  fig, axes = plt.subplots(1, len(panels), squeeze=False, dpi=120,
                           figsize=(4.5 * len(panels), 3.8 + legend_height))
  for ax, (name, lines) in zip(axes[0], panels.items()):
    for label, points in lines.items():
      if not points:
        continue
      x, mean, std = (np.asarray(v, np.float64) for v in zip(*points))
      line, = ax.plot(x, mean, label=label, lw=1.2)
      ax.fill_between(x, mean - std, mean + std, alpha=0.2,
                      color=line.get_color())
    ax.set_title(name, fontsize=9)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout(rect=(0, legend_height / (3.8 + legend_height), 1, 1))
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', fontsize=6, frameon=False)
  _save(fig, path, layout=False)


def plot_ranked_cases(images: np.ndarray, truths: np.ndarray,
                      predictions: np.ndarray, ids: Sequence[object],
                      dice: np.ndarray, path: str) -> None:
  """The best, median and worst cases by Dice (undefined Dice ranked last).

  Args:
    images: [N, H, W(, 1)] intensities in [0, 1].
    truths: [N, H, W] true labels.
    predictions: [N, H, W] predicted labels.
    ids: the cases' ids, for the row titles.
    dice: [N] one Dice per case (NaN where undefined).
    path: the PNG to write.
  """
  ranked = np.argsort(np.where(np.isnan(dice), -np.inf, dice),
                      kind='stable')[::-1]
  rows = [('best', ranked[0]), ('median', ranked[len(ranked) // 2]),
          ('worst', ranked[-1])]
  picks = [i for _, i in rows]
  plot_segmentation_overlays(
      images[picks], truths[picks], predictions[picks], path,
      row_titles=[f'{name}: id {ids[i]}, Dice {dice[i]:.3f}'
                  for name, i in rows],
      title='Test cases: image, truth, prediction')


def _to_unit(image: np.ndarray) -> np.ndarray:
  """A normalised slice to [0, 1] for display (min-max of the slice)."""
  image = np.asarray(image, np.float32)
  lo, hi = float(image.min()), float(image.max())
  return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _pad_to(arrays: list[np.ndarray]) -> np.ndarray:
  h = max(a.shape[0] for a in arrays)
  w = max(a.shape[1] for a in arrays)
  return np.stack([np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])))
                   for a in arrays])


def plot_volume_slices(subjects: Sequence[Mapping[str, np.ndarray]],
                       predictions: Sequence[np.ndarray], modality: str,
                       ignore_label: int, path: str, title: str,
                       max_subjects: int = 3) -> None:
  """Image / truth / prediction through the brain's centre, three axes.

  Args:
    subjects: subject dicts (mrseg.data.volumes) with `modality`, 'label',
      'brain_mask' and 'id'.
    predictions: their predicted labels [X, Y, Z].
    modality: the image shown.
    ignore_label: unlabelled voxels, shown as background.
    path: the PNG to write.
    title: what predicted (the figure's title adds the panels).
    max_subjects: subjects shown, the first ones.
  """
  images, truths, preds, titles = [], [], [], []
  for s, pred in list(zip(subjects, predictions))[:max_subjects]:
    label = np.where(s['label'] == ignore_label, 0, s['label'])
    centre = np.round(np.mean(np.argwhere(s['brain_mask']), axis=0))
    for axis in range(3):
      index = int(centre[axis])
      images.append(_to_unit(np.take(s[modality], index, axis=axis)))
      truths.append(np.take(label, index, axis=axis))
      preds.append(np.take(pred, index, axis=axis))
      titles.append(f'{s["id"]} axis {axis} #{index}')
  plot_segmentation_overlays(
      _pad_to(images), _pad_to(truths), _pad_to(preds), path,
      row_titles=titles,
      title=f'{title}: {modality.upper()}, truth, prediction')


def _save(fig: plt.Figure, path: str, layout: bool = True) -> None:
  if layout:
    fig.tight_layout()
  with workdir_lib.atomic_open(path, 'wb') as f:
    fig.savefig(f, format=os.path.splitext(path)[1][1:] or 'png')
  plt.close(fig)


def overlay_masks(images: np.ndarray, masks: np.ndarray,
                  color: Sequence[float] = (1.0, 0.2, 0.2),
                  alpha: float = 0.45) -> np.ndarray:
  """Tints mask pixels of greyscale images: [N, H, W, 1] x2 -> RGB [N, H, W, 3].

  For showing generated image/mask pairs in one grid: a mask that does not
  sit on the structure it labels is visible at a glance.
  """
  images = np.repeat(np.asarray(images, np.float32)[..., :1], 3, axis=-1)
  masks = np.asarray(masks, np.float32)[..., :1] > 0.5
  tint = np.asarray(color, np.float32)
  return np.where(masks, (1 - alpha) * images + alpha * tint, images)


# Label colours of `label_overlay` (class 1, 2, ...): red, then distinct hues.
LABEL_COLORS = ((1.0, 0.15, 0.15), (0.2, 0.8, 0.2), (0.25, 0.45, 1.0),
                (1.0, 0.85, 0.1), (0.9, 0.3, 0.9), (0.1, 0.9, 0.9))


def label_overlay(image: np.ndarray, labels: np.ndarray,
                  alpha: float = 0.4) -> np.ndarray:
  """A label map drawn over a greyscale image at the image's resolution.

  Args:
    image: [H, W] intensities in [0, 1] (or uint8 0..255).
    labels: [H, W] integer labels, 0 background.
    alpha: opacity of the class colour inside a region; its border (pixels
      with a differently labelled 4-neighbour) is drawn opaque.

  Returns:
    uint8 RGB [H, W, 3].
  """
  image = np.asarray(image)
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / 255.0
  rgb = np.repeat(np.clip(image.astype(np.float32), 0, 1)[..., None], 3, -1)
  labels = np.asarray(labels)
  border = np.zeros(labels.shape, bool)
  border[1:] |= labels[1:] != labels[:-1]
  border[:-1] |= labels[:-1] != labels[1:]
  border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
  border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
  for k in np.unique(labels[labels > 0]).tolist():
    color = np.asarray(LABEL_COLORS[(k - 1) % len(LABEL_COLORS)], np.float32)
    region = labels == k
    rgb[region] = (1 - alpha) * rgb[region] + alpha * color
    rgb[region & border] = color
  return (rgb * 255.0 + 0.5).astype(np.uint8)
