r"""--mode=predict: a trained segmenter on your own images.

  python launch.py --workdir=RUN --mode=predict --input=PATH --output=DIR

RUN is the workdir of a trained segmenter: a UNet (configs/unet.py, or a
pipeline's workdir, whose unet/ is used) or a 3D segmenter (configs/seg3d.py,
fewshot_gan.py, mrigan.py). Its config.json and its best checkpoint (by
validation Dice) are used; no --config is needed. PATH is one file or a
folder of them: PNG/JPG slices for a 2D UNet, NIfTI (.nii, .nii.gz), MGZ or
Analyze (.hdr/.img) volumes for a 3D model.

Each input is preprocessed exactly as the run's training and test data were
(2D: greyscale, resized to the test size with the run's `data.resize`,
the model's own `input_norm` (inside the UNet), sliding windows where the test size exceeds the
training size; 3D: the brain is the nonzero voxels, `data.block_downsample`
block means, the run's `data.normalization` inside the brain, sliding
windows), and the class probabilities are mapped back onto the input's own
grid before the argmax. DIR receives, per input named STEM:

  STEM_mask.png      2D: the labels at the input's resolution; for a 2-class
                     (tumour) model 0 = background, 255 = tumour; otherwise
                     the class index 0..K-1.
  STEM_seg.nii.gz    3D: labels 0 background, 1 CSF, 2 GM, 3 WM (the class
                     index), with the input's affine and header.
  STEM_overlay.png   the labels drawn over the image (3D: three orthogonal
                     slices through the brain's centre).

and, for the run, predictions.csv (one row per input: tumour area in pixels
and, with --pixel_spacing, mm^2; or each tissue's volume in voxels and mL;
the model and checkpoint step; the error for a file that failed) and
labels.json (the label values). A file that cannot be used (unreadable, the
wrong dimensionality or channel count for the model) is reported by name and
the others are still written, unless strict.

This module is the run (the run folder, the inputs, progress, the CSV);
the two segmenters and their pre- and post-processing are in
`segmenters.py`.
"""
from collections.abc import Sequence
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

from absl import logging
import ml_collections

from mrseg.data import io
from mrseg.eval import io as eval_io
from mrseg.eval import segmenters

# config.trainer of the runs that segment, and what they take.
SEGMENTERS = {'unet': '2D', 'mrigan': '3D'}


class PredictError(ValueError):
  """The run cannot predict (no trained model) or the input is missing."""


@dataclasses.dataclass
class Summary:
  """What a prediction run did: the CSV rows and the files that failed."""
  output_dir: pathlib.Path
  rows: list[dict[str, Any]]
  failed: list[tuple[str, str]]


# ----------------------------------------------------------------------------
# The run and the inputs.


def load_run(workdir: str | os.PathLike[str]
             ) -> tuple[ml_collections.ConfigDict, pathlib.Path]:
  """The config of a trained segmenter run and the folder that holds it.

  A synth2seg pipeline's workdir stands for its UNet (`unet/`).

  Raises:
    PredictError: if `workdir` is not a run, not a segmenter's run, or has
      no best checkpoint yet.
  """
  workdir = pathlib.Path(workdir).expanduser()
  path = workdir / 'config.json'
  if not path.is_file():
    raise PredictError(
        f'{workdir} has no config.json: --workdir must be the folder of a '
        'trained run (what --mode=train or --mode=pipeline wrote).')
  try:
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise PredictError(f'{path}: cannot read the run config ({e}).') from e
  trainer = config.get('trainer')
  if trainer == 'synth2seg':
    return load_run(workdir / 'unet')
  if trainer not in SEGMENTERS:
    raise PredictError(
        f'{workdir} is a {trainer!r} run, which does not segment: '
        '--mode=predict needs a UNet run (configs/unet.py, or a pipeline '
        'workdir) or a 3D segmenter run (configs/seg3d.py, fewshot_gan.py, '
        'mrigan.py).')
  if not any((workdir / 'best').glob('*')):
    raise PredictError(
        f'{workdir} has no trained model: no best checkpoint in '
        f'{workdir / "best"} (training writes it at its first validation). '
        f'Train first: python launch.py --config=... --workdir={workdir}')
  return config, workdir

def stem(path: pathlib.Path) -> str:
  """The file name without its image suffix ('x.nii.gz' -> 'x')."""
  suffix = segmenters.volume_suffix(path) or path.suffix
  return path.name[:len(path.name) - len(suffix)] if suffix else path.name

def list_inputs(path: str | os.PathLike[str]) -> list[pathlib.Path]:
  """The files to predict: `path` itself, or the files of a folder.

  A folder's hidden files and sub-folders are left out (logged); an Analyze
  pair counts once, by its .hdr. Every other file is an input, so a file
  that is not an image is reported rather than skipped.

  Raises:
    PredictError: if `path` does not exist or the folder holds no file.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise PredictError(f'--input {path} does not exist.')
  if path.is_file():
    return [path]
  files = []
  for p in sorted(path.iterdir(), key=io.natural_key):
    if p.name.startswith('.') or p.name == 'Thumbs.db':
      continue
    if p.is_dir():
      logging.info('Not reading sub-folder %s (only the files of %s).', p,
                   path)
      continue
    if p.suffix.lower() == '.img' and p.with_suffix('.hdr').exists():
      continue
    files.append(p)
  if not files:
    raise PredictError(f'--input {path} holds no files.')
  return files

def _output_names(files: Sequence[pathlib.Path]) -> list[str]:
  """One output stem per input; 'a.png' and 'a.jpg' get 'a_png', 'a_jpg'."""
  stems = [stem(f) for f in files]
  counts = {s: stems.count(s) for s in stems}
  return [s if counts[s] == 1 else f.name.replace('.', '_')
          for s, f in zip(stems, files)]

class Progress:
  """files done / total, elapsed time and ETA, on one line of stderr."""

  def __init__(self, total: int, enabled: bool = True):
    self.total, self.done, self.enabled = total, 0, enabled and total > 1
    self.start = time.monotonic()
    self.tty = sys.stderr.isatty()
    self._last_logged = -1

  def update(self, count: int, name: str = '') -> None:
    self.done += count
    if not self.enabled:
      return
    elapsed = time.monotonic() - self.start
    eta = elapsed / self.done * (self.total - self.done) if self.done else 0
    width = 30
    fill = int(width * self.done / self.total)
    line = (f'predict [{"#" * fill}{"." * (width - fill)}] {self.done}/'
            f'{self.total} {100 * self.done / self.total:3.0f}% '
            f'{_clock(elapsed)} elapsed, ETA {_clock(eta)} {name}')
    if self.tty:
      end = '\n' if self.done >= self.total else ''
      print(f'\r{line[:150]:<150}', end=end, file=sys.stderr, flush=True)
    else:
      # Logs (CI, nohup): about every tenth of the way.
      decile = 10 * self.done // self.total
      if decile != self._last_logged:
        self._last_logged = decile
        print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


# ----------------------------------------------------------------------------
# The run.


def run(workdir: str | os.PathLike[str], input_path: str | os.PathLike[str],
        output_dir: str | os.PathLike[str], *, strict: bool = False,
        pixel_spacing: float = 0.0, progress: bool = True) -> Summary:
  """Segments every input with the run's best checkpoint; writes DIR.

  Args:
    workdir: the trained run (see `load_run`).
    input_path: one image/volume, or a folder of them.
    output_dir: where masks, overlays, predictions.csv and labels.json go
      (created; files of the same names are replaced).
    strict: stop at the first file that cannot be used, instead of
      reporting it and going on.
    pixel_spacing: 2D only: the pixel size in mm, when known, for areas in
      mm^2 (PNG/JPG files do not record it).
    progress: show a progress bar (folders only).

  Returns:
    The rows written to predictions.csv and the files that failed.

  Raises:
    PredictError: for a run without a trained model, a missing input, or an
      output folder that is the input folder.
    io.DataError: with `strict`, for the first file that cannot be used.
  """
  config, workdir = load_run(workdir)
  files = list_inputs(input_path)
  output_dir = pathlib.Path(output_dir).expanduser()
  if output_dir.resolve() in {f.parent.resolve() for f in files} and len(
      files) > 1:
    raise PredictError(f'--output {output_dir} is the input folder; choose '
                       'another, so that outputs are not read as inputs.')
  if SEGMENTERS[config.trainer] == '2D':
    segmenter = segmenters.Segmenter2D(config, workdir, pixel_spacing)
  else:
    if pixel_spacing:
      logging.warning('--pixel_spacing is for 2D images; volumes carry their '
                      'own voxel size.')
    segmenter = segmenters.Segmenter3D(config, workdir)
  output_dir.mkdir(parents=True, exist_ok=True)
  logging.info('Predicting %d file(s) from %s with %s (%s, best step %d) '
               'into %s.', len(files), input_path, workdir, segmenter.model,
               segmenter.step, output_dir)
  base = {'model': segmenter.model, 'checkpoint_step': segmenter.step,
          'workdir': str(workdir)}
  names = dict(zip(files, _output_names(files)))
  rows: dict[pathlib.Path, dict[str, Any]] = {}
  failed = []
  bar = Progress(len(files), progress)
  for first in range(0, len(files), segmenter.batch_size):
    chunk = files[first:first + segmenter.batch_size]
    items = []
    for path in chunk:
      try:
        items.append(segmenter.read(path))
      except io.DataError as e:
        if strict:
          raise
        message = str(e) if str(path) in str(e) else f'{path}: {e}'
        logging.error('Skipping %s', message)
        failed.append((str(path), message))
        rows[path] = {'file': str(path), 'status': 'error', 'error': message,
                      **base}
    if items:
      for item, labels in zip(items, segmenter.predict(items)):
        path = item['path']
        rows[path] = {'file': str(path), 'status': 'ok', 'error': '',
                      **base,
                      **segmenter.write(item, labels, output_dir,
                                        names[path])}
    bar.update(len(chunk), chunk[-1].name)
  ordered = [rows[f] for f in files]
  eval_io.write_csv(ordered, output_dir / 'predictions.csv')
  doc = {'model': segmenter.model, 'checkpoint_step': segmenter.step,
         'workdir': str(workdir), **segmenter.labels()}
  tmp = segmenters.tmp_beside(output_dir / 'labels.json')
  tmp.write_text(json.dumps(doc, indent=2) + '\n')
  os.replace(tmp, output_dir / 'labels.json')
  logging.info('Wrote %d prediction(s) to %s%s.', len(files) - len(failed),
               output_dir, f'; {len(failed)} file(s) failed: '
               + '; '.join(m for _, m in failed) if failed else '')
  return Summary(output_dir, ordered, failed)
