r"""Input-pipeline throughput: the 2D tumour stream and the 3D patch streams.

Prints one JSON line per measurement:

  {"bench": "input_2d" | "input_3d" | "step_2d" | "step_3d", ...,
   "examples_per_s": ..., "examples_per_cpu_s": ..., "load_avg": ...,
   "cpus": ..., "commit": ..., "date": ...}

* input_2d: `pipeline.train_dataset` over 128x128 phantom tumour slices held
  in memory, with `augment.make_augment_2d` (flip, rotation, elastic,
  gamma/gain/offset) and scaling to [-1, 1], as training reads it; and the
  same without augmentation.
* input_3d: `patches.patch_dataset` over min-max normalised T1 + T2 phantom
  volumes (downsample 2: 84x102x88 voxels), 32^3 patches: 'random'
  (foreground oversampling 0.5) and 'grid' (Mondal et al.: stride 8, > 6000
  labelled voxels), labelled and unlabelled.
* step_2d / step_3d (--consumer): what a train step consumes on the same
  CPU, for the ratio the issue asks for: the jitted forward + backward of a
  UNet (2D: paper 1's, 128x128, batch 4; 3D: depth 3, 16 base features,
  32^3 x 2 channels, batch 8), on a batch already in memory.

`examples_per_s` is wall-clock: it is what a training loop sees, and it
falls when other jobs share the machine (the `load_avg` field says how
busy it was). `examples_per_cpu_s` divides by the CPU time of this process
(all threads), so it is a rough machine-independent cost per example.
Times cover `--steps_2d` / `--steps_3d` batches after `--warmup` (graph
tracing and autotune excluded).

  python benchmarks/input_pipeline.py                 # pipelines only
  python benchmarks/input_pipeline.py --ablate        # + each 2D augmentation
  python benchmarks/input_pipeline.py --consumer      # plus train steps
"""
import argparse
import datetime
import json
import os
import pathlib
import sys
import time
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

import common  # benchmarks/common.py, beside this script
from mrseg.data import phantom
from mrseg.data import volumes
# pylint: enable=g-import-not-at-top,wrong-import-position
# The pipelines measured here are tf.data: TensorFlow (mrseg.data.augment,
# .patches, .pipeline) is imported by the functions that time them, so the
# module imports (e.g. for its tests) where TensorFlow is not installed.

AUGMENT_2D = dict(flip=True, rotation_degrees=15.0, elastic_alpha=2.0,
                  elastic_sigma=10.0, intensity_scale=0.1,
                  intensity_shift=0.05, gamma=0.2)


def emit(record: dict[str, Any]) -> None:
  record.update(load_avg=round(os.getloadavg()[0], 2), cpus=os.cpu_count(),
                commit=common.git_commit(),
                date=datetime.datetime.now().isoformat(timespec='seconds'))
  print(json.dumps(record), flush=True)


def time_iterator(iterator, batch: int, steps: int,
                  warmup: int) -> dict[str, float]:
  """Examples per wall second and per CPU second over `steps` batches."""
  for _ in range(warmup):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return {'examples_per_s': round(batch * steps / wall, 1),
          'examples_per_cpu_s': round(batch * steps / max(cpu, 1e-9), 1)}


def bench_2d(args) -> None:
  # pylint: disable=g-import-not-at-top
  from mrseg.data import augment
  from mrseg.data import pipeline
  # pylint: enable=g-import-not-at-top
  data = phantom.tumor_slices(args.num_slices, 128, seed=0)
  arrays = {'image': data['image'], 'mask': data['mask']}
  variants = [('augmented', AUGMENT_2D), ('plain', {})]
  if args.ablate:
    # One augmentation at a time: where the time goes.
    variants += [
        ('flip', dict(flip=True)),
        ('rotation', dict(rotation_degrees=15.0)),
        ('elastic', dict(elastic_alpha=2.0, elastic_sigma=10.0)),
        ('intensity', dict(intensity_scale=0.1, intensity_shift=0.05,
                           gamma=0.2))]
  for name, config in variants:
    fn = augment.make_augment_2d(seed=0, **config)
    ds = pipeline.train_dataset(
        arrays, args.batch_2d, 0, process_index=0, process_count=1,
        preprocess=lambda ex, fn=fn: pipeline.scale_images(fn(ex)))
    result = time_iterator(ds.as_numpy_iterator(), args.batch_2d,
                           args.steps_2d, args.warmup)
    emit({'bench': 'input_2d', 'variant': name, 'image_size': 128,
          'batch': args.batch_2d, **result})


def bench_3d(args) -> None:
  from mrseg.data import patches  # pylint: disable=g-import-not-at-top
  subjects = volumes.load_volumes('phantom3d', num_subjects=args.num_subjects,
                                  downsample=2)
  modalities = ('t1', 't2')
  subjects = volumes.normalize_subjects(subjects, modalities, 'minmax')
  pad = volumes.background_value('minmax')
  for sampling, labelled in (('random', True), ('grid', True),
                             ('random', False)):
    ds = patches.patch_dataset(
        subjects, modalities, args.batch_3d, 0, patch_size=32,
        sampling=sampling, stride=8, min_foreground=6000,
        foreground_fraction=0.5, labelled=labelled, pad_value=pad,
        process_index=0, process_count=1)
    result = time_iterator(ds.as_numpy_iterator(), args.batch_3d,
                           args.steps_3d, args.warmup)
    emit({'bench': 'input_3d', 'variant': sampling,
          'labelled': labelled, 'patch': 32, 'modalities': 2,
          'volume': list(subjects[0]['t1'].shape),
          'batch': args.batch_3d, **result})


def bench_steps(args) -> None:
  """Forward + backward of a UNet, the consumer the pipelines must feed."""
  # Imported here: only --consumer needs JAX models.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mrseg.models import unet  # pylint: disable=g-import-not-at-top

  def measure(bench, model, shape, num_classes, batch):
    x = jnp.zeros((batch, *shape), jnp.float32)
    y = jnp.zeros((batch, *shape[:-1]), jnp.int32)
    params = model.init(jax.random.key(0), x)

    @jax.jit
    def step(params, x, y):
      def loss(p):
        logits = model.apply(p, x)
        onehot = jax.nn.one_hot(y, num_classes)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * onehot, -1))
      return jax.grad(loss)(params)

    jax.block_until_ready(step(params, x, y))
    times = []
    for _ in range(args.consumer_steps):
      t = time.perf_counter()
      jax.block_until_ready(step(params, x, y))
      times.append(time.perf_counter() - t)
    median = float(np.median(times))
    emit({'bench': bench, 'shape': list(shape), 'batch': batch,
          'examples_per_s': round(batch / median, 2),
          'step_time_ms': round(1e3 * median, 1)})

  measure('step_2d', unet.UNet(num_classes=2), (128, 128, 1), 2, 4)
  measure('step_3d', unet.UNet(num_classes=4, depth=3, base_features=16),
          (32, 32, 32, 2), 4, 8)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--bench', nargs='+', default=['2d', '3d'],
                      choices=['2d', '3d'])
  # Enough batches for a few seconds each, so that the prefetched batches
  # (ready before the clock starts) do not inflate the rate.
  parser.add_argument('--steps_2d', type=int, default=60)
  parser.add_argument('--steps_3d', type=int, default=400)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--ablate', action='store_true',
                      help='2D: also time each augmentation alone')
  parser.add_argument('--batch_2d', type=int, default=32)
  parser.add_argument('--batch_3d', type=int, default=16)
  parser.add_argument('--num_slices', type=int, default=128)
  parser.add_argument('--num_subjects', type=int, default=4)
  parser.add_argument('--consumer', action='store_true',
                      help='also time UNet train steps on this CPU')
  parser.add_argument('--consumer_steps', type=int, default=3)
  args = parser.parse_args()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  if '2d' in args.bench:
    bench_2d(args)
  if '3d' in args.bench:
    bench_3d(args)
  if args.consumer:
    bench_steps(args)


if __name__ == '__main__':
  main()
