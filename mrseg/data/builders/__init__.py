"""TFDS builders for the real datasets, read from the user's manual download.

Each builder reads a download in the dataset's own layout (no conversion
step) and never downloads; `prepare` is the one entry point:

  builder = prepare('brain_tumor_detection', manual_dir='~/data/btd')
  ds = builder.as_dataset(split='train')

Names may carry a builder config after a slash:
'brain_tumor_segmentation/figshare', 'mrbrains13/tissue'. A prepared copy is
reused only while it was built from the same manual directory with the same
files (see `base` for how this is checked).
"""
import os
import shutil

from absl import logging
import tensorflow_datasets as tfds

from mrseg import workdir
from mrseg.data import io
from mrseg.data.builders import base
from mrseg.data.builders import brain_tumor_detection
from mrseg.data.builders import brain_tumor_segmentation
from mrseg.data.builders import freesurfer_tissue
from mrseg.data.builders import iseg2017
from mrseg.data.builders import mrbrains

DataError = io.DataError
select_ids = brain_tumor_segmentation.select_ids

BUILDERS: dict[str, type[base.ManualDirBuilder]] = {
    cls.name: cls
    for cls in (
        brain_tumor_detection.BrainTumorDetection,
        brain_tumor_segmentation.BrainTumorSegmentation,
        iseg2017.Iseg2017,
        mrbrains.Mrbrains13,
        mrbrains.Mrbrains18,
        freesurfer_tissue.FreesurferTissue,
    )
}

__all__ = [
    'BUILDERS', 'DataError', 'get_builder', 'names', 'prepare', 'select_ids'
]


def names() -> list[str]:
  """Every accepted `name`, configs included ('mrbrains13/tissue')."""
  out = []
  for name, cls in sorted(BUILDERS.items()):
    out.append(name)
    out.extend(f'{name}/{c.name}' for c in cls.BUILDER_CONFIGS)
  return out


def get_builder(
    name: str, *, data_dir: str | os.PathLike[str] | None = None
) -> base.ManualDirBuilder:
  """Returns the (possibly unprepared) builder for 'name' or 'name/config'.

  Raises:
    ValueError: if the name or the config is unknown; lists the valid names.
  """
  dataset, _, config = name.partition('/')
  cls = BUILDERS.get(dataset)
  configs = [c.name for c in cls.BUILDER_CONFIGS] if cls else []
  if cls is None or (config and config not in configs):
    raise ValueError(
        f'Unsupported dataset {name!r}; choose one of {names()}.'
    )
  return cls(config=config or None, data_dir=data_dir)


def prepare(
    name: str,
    *,
    manual_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
) -> tfds.core.DatasetBuilder:
  """Builds (once; later calls reuse the prepared files) and returns `name`.

  The prepared copy is reused only if it records the same resolved
  `manual_dir` and the same source-file fingerprint (paths, sizes, mtimes);
  otherwise it is rebuilt, with a warning, so a copy made from another or a
  changed download is never silently reused.

  Args:
    name: dataset name, optionally with a config ('mrbrains13/tissue');
      see `names()`.
    manual_dir: the user's download, in the dataset's own layout.
    data_dir: where TFDS keeps prepared datasets; None is the TFDS default
      (~/tensorflow_datasets).

  Returns:
    The prepared builder; read it with `builder.as_dataset(split='train')`.

  Raises:
    ValueError: if `name` is unknown.
    DataError: if the manual directory is missing or empty, or a file in it
      is missing, unreadable or holds unexpected values; the message names
      the file(s).
  """
  builder = get_builder(name, data_dir=data_dir)
  manual = io.require_dir(
      manual_dir, layout=builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  )
  source = builder.check_manual_dir(manual)
  # One preparation of a dataset at a time: another process preparing it
  # makes this one wait, then reuse its result. In a multi-process run
  # process 0 prepares it first, so hosts without a shared lock reuse it too.
  with workdir.main_process_first(f'prepare {name}'), workdir.lock(
      os.fspath(builder.data_path.parent), wait=True):
    builder = get_builder(name, data_dir=data_dir)  # info as it is now
    _remove_incomplete(builder)
    return _prepare(name, builder, manual, source, data_dir)


def _remove_incomplete(builder: base.ManualDirBuilder) -> None:
  """Deletes what a killed preparation left (TFDS's incomplete.* folders)."""
  version = builder.data_path.name
  for path in builder.data_path.parent.glob(f'incomplete.*_{version}'):
    logging.warning('Removing %s, left by an interrupted preparation.', path)
    shutil.rmtree(path, ignore_errors=True)


def _prepare(name, builder, manual, source, data_dir):
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.data_path.exists():
    recorded = _recorded_source(builder)
    if recorded == (str(manual), source):
      return builder
    logging.warning(
        'Rebuilding %s in %s: it was prepared from %s (fingerprint %s), not '
        'from %s (fingerprint %s).', name, builder.data_dir, recorded[0],
        (recorded[1] or '')[:12], manual, source[:12],
    )
    # Deletes the stale copy and generates anew (nothing is downloaded).
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual), download_mode=mode
      )
  )
  # A fresh builder reads the info exactly as later runs will.
  return get_builder(name, data_dir=data_dir)


def _recorded_source(
    builder: base.ManualDirBuilder,
) -> tuple[str | None, str | None]:
  """The (manual_dir, fingerprint) a prepared copy was built from."""
  try:
    metadata = builder.info.metadata or {}
    return (
        metadata.get(base.SOURCE_DIR_KEY),
        metadata.get(base.SOURCE_FINGERPRINT_KEY),
    )
  except Exception:  # pylint: disable=broad-except
    # Unreadable metadata (e.g. a copy from before the record existed) means
    # unknown provenance: treat it as stale.
    return None, None
