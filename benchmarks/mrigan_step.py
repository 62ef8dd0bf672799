r"""Throughput of paper 2's 3D tissue segmenters: train steps and inference.

Prints one JSON line per measurement:

  {"bench": "mrigan_train_step", "impl": "mrseg" | "torch",
   "kind": "supervised" | "fewshot_gan" | "mrigan",
   "conv": "depth_to_channels" | "xla" | ... (None for torch), "batch": B_l,
   "unlabelled_batch": B_u, "patch": P, "channels": C, "dtype": ...,
   "examples_per_s": (B_l + B_u) / step time, "step_time_ms": ...,
   "flops_per_step": ..., "achieved_flops_per_s": ..., "device": ...,
   "commit": ..., "date": ..., "load_average": [1, 5, 15 min], ...}
  {"bench": "mrigan_sliding_window", "impl": "mrseg" | "torch",
   "kind": "supervised,fewshot_gan,mrigan", "conv": ...,
   "batch": windows per call, "patch": window, "volume": [X, Y, Z],
   "windows": ..., "examples_per_s": windows / s, "step_time_ms": ms per
   volume, "seconds_per_volume": ..., "voxels_per_s": ..., ...}

**Train step** (`--bench train`): `mrseg.train.mrigan_step.make_train_step`
for each `--kinds` (configs/tissue_base.py: 'supervised' = configs/seg3d.py,
'fewshot_gan' = Standard-GAN, configs/fewshot_gan.py, 'mrigan' =
configs/mrigan.py) at the paper's scale: 32^3 patches of T1 + T2, 30
labelled + 30 unlabelled patches per step (the GANs also generate 30, so
their discriminator sees 90 patches a step; 'supervised' reads only the
labelled ones), the state from `create_state`, compiled as training compiles
it (`parallel.Parallel('jit').compile`: jitted, state donated). Batches are
synthetic (uniform images in [-1, 1], random labels) and already on the
device. examples_per_s counts the real patches a step consumes (B_l + B_u;
B_l for 'supervised'), comparable with the input pipeline's patches/s in
benchmarks/input_pipeline.py. The kinds' timed steps are interleaved, so
that load from other jobs hits them alike.

**Sliding window** (`--bench sliding_window`): `segmentation.predict_volume`
(the evaluation path: `make_predict_fn` + `sliding_window_inference`) over
one synthetic `--volume` (default 144x192x256, iSEG-2017's size) of C
channels, with the config's window (`eval.window_size`, 0 = the patch),
overlap (0.5), Gaussian weighting and `eval.window_batch_size` (8) windows
per call. Its time includes the host side of the evaluation (cutting
windows, softmax, Gaussian-weighted accumulation in numpy). The three kinds
share the segmenter, so it runs once per distinct discriminator config.
flops_per_step = counted FLOPs of one predict call x calls per volume.

**Convolutions** (`--conv NAME ...`): the 3D convolutions of the
segmenter and of paper 2's generator (model.discriminator.conv and
model.generator.conv, from `mrseg.models.convs.CONVS`; the configs'
default is 'depth_to_channels', 'xla' is `nn.Conv`). With several names
each kind runs once per name, all interleaved: the same networks and
maths, another convolution primitive.

**PyTorch reference** (`--impl torch`, the default when torch is
installed, JAX runs on the CPU and --dtype is float32):
`benchmarks/torch_mrigan.py`, the same segmenter (parameter count checked
equal) and supervised step (class-weighted CE, Adam), eager, channels
first, `torch.set_num_threads` = usable cores. It joins the 'supervised'
train step (the one kind it implements) and the sliding window (the same
`predict_subject` with torch as the predict function), its timed calls
interleaved with mrseg's so that load from other jobs hits both; compare
the ratio of one run. FLOPs: `torch.utils.flop_counter`. torch is not an
mrseg requirement: install it beside mrseg only to measure.

Times are medians over `--steps` calls after `--warmup` untimed ones
(compilation excluded; compile_s reports it), each ended by
`jax.block_until_ready` (the sliding window returns host numpy). FLOPs come
from XLA's cost analysis of the compiled function, xla_memory_bytes (what
one call holds: arguments + outputs + temporaries, less donated buffers)
from its memory analysis. No TensorFlow or clu is imported, so it runs on
an accelerator host with JAX alone.

  # CPU vs PyTorch eager: the supervised step with XLA's 3D convolutions,
  # with depth_to_channels (the default) and in torch (pip install torch
  # first), interleaved
  python benchmarks/mrigan_step.py --bench train --kinds supervised \
    --batch 4 --steps 5 --warmup 1 --conv xla depth_to_channels
  # CPU (benchmarks/README.md's table): the three kinds at the paper's
  # patch, batch 4 (batch 30 takes ~14 min a round on 2 cores), then a
  # volume of half the size per axis (the whole one takes ~22 min there)
  python benchmarks/mrigan_step.py --bench train --batch 4 --steps 3 \
    --warmup 1 --out benchmarks/results/cpu_mrigan_$(date -u +%F).jsonl
  python benchmarks/mrigan_step.py --bench sliding_window --volume 72x96x128 \
    --steps 1 --warmup 0 \
    --out benchmarks/results/cpu_mrigan_$(date -u +%F).jsonl
  # Paper scale: batch 30 + 30, the whole 144x192x256 volume
  python benchmarks/mrigan_step.py --steps 3 --warmup 1
  # GPU (jax[cuda] installed): float32 and bfloat16 compute
  python benchmarks/mrigan_step.py --dtype float32 --steps 10 --warmup 2 \
    --out benchmarks/results/gpu_mrigan_$(date -u +%F).jsonl
  python benchmarks/mrigan_step.py --dtype bfloat16 --steps 10 --warmup 2 \
    --out benchmarks/results/gpu_mrigan_$(date -u +%F).jsonl
  # Larger batches, e.g. on a GPU
  python benchmarks/mrigan_step.py --bench train --batch 30 60 120
  # Overrides, e.g. a CPU-sized variant or an ablation
  python benchmarks/mrigan_step.py --variant quick --volume 72x96x128
  python benchmarks/mrigan_step.py --kinds mrigan \
    --set model.generator.fusion=concat
"""
import argparse
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / 'benchmarks'))

# pylint: disable=g-import-not-at-top,wrong-import-position
import common
from configs import tissue_base
from mrseg import overrides as overrides_lib
from mrseg.data import tissue
from mrseg.eval import segmentation
from mrseg.eval import sliding_window
from mrseg.models import convs
from mrseg.models import layers
from mrseg.train import mrigan_options
from mrseg.train import mrigan_step as step_lib
from mrseg.train import mrigan_trainer
from mrseg.train import parallel as parallel_lib
import torch_mrigan
# pylint: enable=g-import-not-at-top,wrong-import-position

BENCHES = ('train', 'sliding_window')
KINDS = tissue_base.KINDS
IMPLS = ('mrseg', 'torch')
ISEG_VOLUME = (144, 192, 256)


def parse_volume(text: str) -> tuple[int, int, int]:
  """'144x192x256' -> (144, 192, 256)."""
  parts = tuple(int(p) for p in text.lower().split('x'))
  if len(parts) != 3 or min(parts) < 1:
    raise argparse.ArgumentTypeError(
        f'--volume takes XxYxZ, e.g. 144x192x256; got {text!r}.')
  return parts


def kind_config(kind: str, variant: str = '', batch: int | None = None,
                patch: int | None = None, dtype: str = 'float32',
                overrides: dict[str, str] | None = None,
                conv: str | None = None):
  """configs/tissue_base.py for `kind` (+ variants), with the overrides.

  `batch` sets the labelled batch and the unlabelled one to the same
  multiple of it as in the config (30 and 30: equal). `conv` (if given)
  sets the 3D convolutions (model.discriminator.conv and
  model.generator.conv) after the overrides.
  """
  config = tissue_base.get_config(','.join([kind] + [
      v for v in variant.split(',') if v]))
  if batch:
    ratio = max(config.unlabelled_batch_size // config.batch_size, 1)
    config.batch_size = batch
    config.unlabelled_batch_size = batch * ratio
  if patch:
    config.data.patch_size = patch
  config.model.dtype = dtype
  overrides_lib.apply(config, overrides or {}, parse=True)
  if conv:
    convs.conv(conv)  # fails loudly on an unknown name
    config.model.discriminator.conv = conv
    config.model.generator.conv = conv
  mrigan_options.check_config(config, jax.device_count())
  return config


def label(kind: str, impl: str, conv: str | None) -> str:
  """A runner's name: 'supervised/depth_to_channels', 'supervised/torch'."""
  return f'{kind}/{conv if impl == "mrseg" else impl}'


def synthetic_batch(config, parallel: parallel_lib.Parallel,
                    key: jax.Array) -> dict[str, Any]:
  """A step's batch made on the device: images in [-1, 1], random labels."""
  p = config.data.patch_size
  c = len(tissue.modalities(config))
  n_l, n_u = config.batch_size, config.unlabelled_batch_size
  k_image, k_label, k_unlabelled = jax.random.split(key, 3)

  @jax.jit
  def make():
    batch = {'labelled': {
        'image': jax.random.uniform(k_image, (n_l, p, p, p, c), jnp.float32,
                                    -1.0, 1.0),
        'label': jax.random.randint(k_label, (n_l, p, p, p), 0,
                                    config.model.num_classes).astype(
                                        jnp.uint8)}}
    if mrigan_options.is_gan(config):
      batch['unlabelled'] = {'image': jax.random.uniform(
          k_unlabelled, (n_u, p, p, p, c), jnp.float32, -1.0, 1.0)}
    return batch

  return jax.device_put(make(), parallel.data_sharding)


class TrainBench:
  """One kind's compiled train step, its state and batch, ready to time."""

  def __init__(self, config):
    self.config = config
    parallel = parallel_lib.Parallel('jit')
    key = jax.random.key(config.seed)
    state = parallel.replicate(step_lib.create_state(config, key))
    self.d_params = layers.count_params(state.disc.params)
    self.g_params = layers.count_params(state.gen.params)
    batch = synthetic_batch(config, parallel, jax.random.key(1))
    # Any weights: the step's cost does not depend on them.
    weights = (1.0,) * config.model.num_classes
    step = parallel.compile(step_lib.make_train_step(config, weights))
    start = time.perf_counter()
    self.compiled = step.lower(state, batch, key).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = common.xla_flops(self.compiled)
    self.memory_bytes = common.xla_memory_bytes(self.compiled)
    self.state = state
    self.metrics = None

    def call():
      self.state, self.metrics = self.compiled(self.state, batch, key)
      jax.block_until_ready((self.state, self.metrics))

    self.call = call
    self.gan = mrigan_options.is_gan(config)
    n_u = config.unlabelled_batch_size if self.gan else 0
    # Real patches read per step (the GANs also generate n_u).
    self.examples = config.batch_size + n_u
    self.d_patches = config.batch_size + 2 * n_u


class TorchTrainBench:
  """`torch_mrigan`'s supervised step on the config's network and batch."""

  def __init__(self, config):
    self.config = config
    torch = torch_mrigan.torch
    self.trainer = torch_mrigan.Trainer.from_config(config)
    self.d_params = torch_mrigan.count_params(self.trainer.net)
    images, labels = torch_mrigan.synthetic_batch(
        config.batch_size, config.data.patch_size,
        len(tissue.modalities(config)), config.model.num_classes)
    self.loss = None

    def call():
      self.loss = self.trainer.step(images, labels)

    self.call = call
    # Count one step's FLOPs once, outside the timed calls.
    from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
      call()
    self.flops = float(counter.get_total_flops())
    self.device = f'cpu x{torch.get_num_threads()} threads (torch)'
    self.examples = self.d_patches = config.batch_size


def run_train(kinds: list[str], variant: str, batch: int | None,
              patch: int | None, dtype: str, steps: int, warmup: int,
              overrides: dict[str, str], convs: list[str | None] = (None,),
              impls: list[str] = ('mrseg',)) -> list[dict[str, Any]]:
  """Times the kinds' train steps, interleaved step by step.

  mrseg runs every kind with every discriminator conv in `convs` (None: the
  config's); torch (if in `impls`) runs the 'supervised' kind, the one its
  reference implements.
  """
  runners = {}
  if 'mrseg' in impls:
    for kind in kinds:
      for conv in convs:
        config = kind_config(kind, variant, batch, patch, dtype, overrides,
                             conv)
        runners[label(kind, 'mrseg', config.model.discriminator.conv)] = (
            TrainBench(config))
  if 'torch' in impls and 'supervised' in kinds:
    config = kind_config('supervised', variant, batch, patch, dtype,
                         overrides)
    runners[label('supervised', 'torch', None)] = TorchTrainBench(config)
  times = common.time_calls({k: r.call for k, r in runners.items()}, steps,
                            warmup)
  date = common.utc_now()
  commit = common.git_commit()
  records = []
  for name, r in runners.items():
    c = r.config
    kind = c.model.kind
    if isinstance(r, TorchTrainBench):
      impl, conv, gan, device = 'torch', None, False, r.device
      extra = {'g_params': 0, 'compile_s': None, 'xla_memory_bytes': None,
               'd_loss': r.loss}
    else:
      impl, conv, gan = 'mrseg', c.model.discriminator.conv, r.gan
      device = common.jax_device()
      metrics = jax.device_get(r.metrics) if r.metrics is not None else {}
      extra = {
          'g_params': r.g_params, 'compile_s': round(r.compile_s, 1),
          'xla_memory_bytes': r.memory_bytes,
          'd_loss': (float(metrics['d_loss']) if 'd_loss' in metrics
                     else None)}
    records.append({
        'bench': 'mrigan_train_step', 'impl': impl, 'kind': kind,
        'conv': conv, 'batch': c.batch_size,
        'unlabelled_batch': c.unlabelled_batch_size if gan else 0,
        'patch': c.data.patch_size,
        'channels': len(tissue.modalities(c)),
        'dtype': c.model.dtype,
        **common.timing_fields(r.examples, times[name], r.flops),
        'device': device, 'commit': commit, 'date': date,
        'steps': steps, 'times_ms': common.times_ms(times[name]),
        'd_patches_per_step': r.d_patches, 'd_params': r.d_params, **extra,
        'load_average': common.load_average(),
        'variant': variant or None, 'overrides': overrides or None,
    })
  return records


class SlidingWindowBench:
  """Sliding-window prediction of one volume, as evaluation runs it."""

  def __init__(self, config, volume: tuple[int, int, int]):
    self.config = config
    parallel = parallel_lib.Parallel('jit')
    state = step_lib.create_state(config, jax.random.key(config.seed))
    params = jax.device_put(state.disc.params, parallel.replicated)
    self.d_params = layers.count_params(params)
    predict = mrigan_trainer.make_predict_fn(config, parallel)
    c = len(tissue.modalities(config))
    w = config.eval.window_size or config.data.patch_size
    self.window, self.batch = w, config.eval.window_batch_size
    start = time.perf_counter()
    # Compiles what predict_subject calls (predict, the softmax) on a
    # one-window volume ...
    segmentation.predict_volume(config, predict, params,
                                   np.zeros((w, w, w, c), np.float32))
    self.compile_s = time.perf_counter() - start
    # ... and counts one predict call's FLOPs.
    windows = np.zeros((self.batch, w, w, w, c), np.float32)
    compiled = predict.lower(params, windows).compile()
    self.flops_per_call = common.xla_flops(compiled)
    self.bytes_per_call = common.xla_bytes_accessed(compiled)
    self.memory_bytes = common.xla_memory_bytes(compiled)
    padded = [max(s, w) for s in volume]
    self.windows = math.prod(
        len(sliding_window.window_starts(s, w, config.eval.overlap))
        for s in padded)
    self.calls = math.ceil(self.windows / self.batch)
    self.flops = (self.flops_per_call * self.calls
                  if self.flops_per_call else None)
    image = np.random.default_rng(0).uniform(
        -1.0, 1.0, tuple(volume) + (c,)).astype(np.float32)
    self.volume = tuple(volume)
    self.probs_shape = None

    def call():
      probs = segmentation.predict_volume(config, predict, params, image)
      self.probs_shape = probs.shape  # host numpy: already complete

    self.call = call


def discriminator_key(config) -> str:
  """What the sliding window's cost depends on (equal across the kinds)."""
  return json.dumps({
      'd': config.model.discriminator.to_dict(),
      'k': config.model.num_classes, 'dtype': config.model.dtype,
      'patch': config.data.patch_size, 'modalities': config.data.modalities,
      'eval': config.eval.to_dict(), 'norm': config.data.normalization,
  }, sort_keys=True, default=str)


class TorchSlidingWindowBench:
  """`predict_subject` with `torch_mrigan`'s segmenter as the predict fn."""

  def __init__(self, config, volume: tuple[int, int, int]):
    self.config = config
    torch = torch_mrigan.torch
    trainer = torch_mrigan.Trainer.from_config(config)
    trainer.net.eval()
    self.d_params = torch_mrigan.count_params(trainer.net)
    c = len(tissue.modalities(config))
    w = config.eval.window_size or config.data.patch_size
    self.window, self.batch = w, config.eval.window_batch_size

    def predict(params, windows):
      del params
      with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(windows)).permute(
            0, 4, 1, 2, 3)
        return trainer.net(x).permute(0, 2, 3, 4, 1).numpy()

    padded = [max(s, w) for s in volume]
    self.windows = math.prod(
        len(sliding_window.window_starts(s, w, config.eval.overlap))
        for s in padded)
    self.calls = math.ceil(self.windows / self.batch)
    from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
      predict(None, np.zeros((self.batch, w, w, w, c), np.float32))
    self.flops_per_call = float(counter.get_total_flops())
    self.flops = self.flops_per_call * self.calls
    self.memory_bytes = None
    self.compile_s = None  # eager
    image = np.random.default_rng(0).uniform(
        -1.0, 1.0, tuple(volume) + (c,)).astype(np.float32)
    self.volume = tuple(volume)
    self.device = f'cpu x{torch.get_num_threads()} threads (torch)'

    def call():
      segmentation.predict_volume(config, predict, None, image)

    self.call = call


def run_sliding_window(kinds: list[str], variant: str, patch: int | None,
                       dtype: str, volume: tuple[int, int, int], steps: int,
                       warmup: int, overrides: dict[str, str],
                       convs: list[str | None] = (None,),
                       impls: list[str] = ('mrseg',)
                       ) -> list[dict[str, Any]]:
  """Times one volume's prediction per distinct segmenter, interleaved.

  mrseg: one runner per distinct discriminator config of the kinds and
  `convs`; torch (if in `impls`): the reference segmenter of the first kind.
  """
  groups: dict[str, list[Any]] = {}
  for conv in convs:
    for kind in kinds:
      config = kind_config(kind, variant, None, patch, dtype, overrides, conv)
      groups.setdefault(discriminator_key(config), []).append((kind, config))
  runners = {}
  if 'mrseg' in impls:
    for members in groups.values():
      config = members[0][1]
      name = ','.join(kind for kind, _ in members)
      runners[f'{name}/{config.model.discriminator.conv}'] = (
          SlidingWindowBench(config, volume))
  if 'torch' in impls:
    config = kind_config(kinds[0], variant, None, patch, dtype, overrides)
    runners[f'{",".join(kinds)}/torch'] = TorchSlidingWindowBench(config,
                                                                  volume)
  times = common.time_calls({k: r.call for k, r in runners.items()}, steps,
                            warmup)
  records = []
  for name, r in runners.items():
    c = r.config
    torch_impl = isinstance(r, TorchSlidingWindowBench)
    voxels = math.prod(r.volume)
    t = times[name]
    records.append({
        'bench': 'mrigan_sliding_window',
        'impl': 'torch' if torch_impl else 'mrseg',
        'kind': name.rsplit('/', 1)[0],
        'conv': None if torch_impl else c.model.discriminator.conv,
        'batch': r.batch, 'patch': r.window,
        'channels': len(tissue.modalities(c)),
        'dtype': c.model.dtype,
        **common.timing_fields(r.windows, t, r.flops),
        'device': r.device if torch_impl else common.jax_device(),
        'commit': common.git_commit(),
        'date': common.utc_now(), 'steps': steps,
        'times_ms': common.times_ms(t),
        'volume': list(r.volume), 'windows': r.windows,
        'predict_calls': r.calls, 'overlap': c.eval.overlap,
        'weighting': c.eval.weighting,
        'seconds_per_volume': statistics.median(t),
        'voxels_per_s': voxels / statistics.median(t),
        'flops_per_predict_call': r.flops_per_call,
        'd_params': r.d_params,
        'compile_s': None if r.compile_s is None else round(r.compile_s, 1),
        'xla_memory_bytes': r.memory_bytes,
        'load_average': common.load_average(),
        'variant': variant or None, 'overrides': overrides or None,
    })
  return records


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--bench', nargs='+', choices=BENCHES,
                      default=list(BENCHES))
  parser.add_argument('--kinds', nargs='+', choices=KINDS, default=list(KINDS))
  parser.add_argument('--variant', default='',
                      help="configs/tissue_base.py variants, e.g. 'quick' or "
                      "'test' (comma-separated); '' = paper scale")
  parser.add_argument('--batch', type=int, nargs='+', default=[None],
                      help='labelled patches per step (default: the '
                      "config's, 30); the unlabelled batch follows")
  parser.add_argument('--patch', type=int, default=None,
                      help="patch size (default: the config's, 32)")
  parser.add_argument('--dtype', default='float32',
                      choices=('float32', 'bfloat16'))
  parser.add_argument('--volume', type=parse_volume, default=ISEG_VOLUME,
                      help='sliding-window volume XxYxZ (default 144x192x256)')
  parser.add_argument('--steps', type=int, default=3, help='timed calls')
  parser.add_argument('--warmup', type=int, default=1, help='untimed calls')
  parser.add_argument('--conv', nargs='+', default=[None],
                      choices=sorted(convs.CONVS),
                      help='3D convolutions to time side by side '
                      '(model.discriminator.conv and model.generator.conv); '
                      "default: the config's")
  parser.add_argument('--impl', nargs='+', choices=IMPLS, default=None,
                      help='default: mrseg, plus torch (benchmarks/'
                      'torch_mrigan.py: the supervised step and the sliding '
                      'window) when it is installed, JAX runs on the CPU and '
                      '--dtype is float32')
  parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                      help='config overrides, e.g. eval.window_batch_size=16 '
                      'or model.generator.fusion=concat')
  parser.add_argument('--out', default=None,
                      help='also append the JSON lines to this file')
  args = parser.parse_args(argv)
  overrides = dict(kv.split('=', 1) for kv in args.set)
  impls = args.impl
  if impls is None:
    impls = ['mrseg']
    if (torch_mrigan.torch is not None and jax.default_backend() == 'cpu'
        and args.dtype == 'float32'):
      impls.append('torch')
  if 'torch' in impls:
    torch_mrigan.require_torch()
    torch_mrigan.torch.set_num_threads(torch_mrigan.num_cores())

  records = []
  for bench in args.bench:
    if bench == 'train':
      for batch in args.batch:
        for record in run_train(args.kinds, args.variant, batch, args.patch,
                                args.dtype, args.steps, args.warmup,
                                overrides, args.conv, impls):
          common.emit(record, args.out)
          records.append(record)
    else:
      for record in run_sliding_window(args.kinds, args.variant, args.patch,
                                       args.dtype, args.volume, args.steps,
                                       args.warmup, overrides, args.conv,
                                       impls):
        common.emit(record, args.out)
        records.append(record)
  return records


if __name__ == '__main__':
  main()
