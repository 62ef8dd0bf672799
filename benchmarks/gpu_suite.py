r"""Everything only an accelerator can measure, in one command of minutes.

GPU time for this project comes in short, rare windows (about 15 minutes on
one H100/H200, start-up included), so one prepared command measures it all
and writes JSON lines plus a markdown table:

* train steps of paper 1's DCGAN and UNet (128x128) at batch 4, 64 and 256,
  and of paper 2's 3D segmenter ('supervised') and MRI-GAN at the paper's
  batch (30 labelled + 30 unlabelled 32^3 patches), each at float32 and
  bfloat16 compute: step time, examples/s, XLA cost-analysis FLOPs and
  bytes, achieved FLOP/s, and the fraction of the roofline achieved (the
  roofline time is max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)), with
  compile time apart;
* sliding-window inference of a whole 144x192x256 volume (iSEG size);
* the on-device 2D augmentation (mrseg.data.augment_jax, everything on) at
  128x128, and the input pipeline's overhead: the on-device augmentation's
  time over the UNet step's, and the host's share (decoding and batching at
  the rate tf.data measured on a CPU, benchmarks/README.md, over the step
  time; it must stay below 1 for prefetching to hide it);
* the projected wall time of paper 1's DCGAN schedule (37,500 steps at
  batch 4).

Measurements run in priority order (bfloat16 first); when --budget-s is
spent, the rest are recorded as skipped, so that the command always ends
inside its window with a results file. A failing measurement (e.g. out of
memory) is recorded with its error and the suite goes on; the exit status
is 1 if any failed.

  # On a GPU (8 minutes at most with compilation, on one H100/H200):
  python benchmarks/gpu_suite.py --out-dir benchmarks/results
  # CI, on the CPU, in well under a minute: tiny configs, every code path
  python benchmarks/gpu_suite.py --smoke --out-dir /tmp/suite

Needs JAX, Flax, Optax, Orbax and ml_collections (a pure-Python wheel; see
README.md, "GPUs and TPUs"); never TensorFlow, TensorFlow Datasets or clu
(tested with their imports blocked). Peak numbers are arguments; the
defaults are the H100/H200 SXM data-sheet values: 989.4 TFLOP/s dense
bf16, 494.7 TFLOP/s dense TF32 (XLA's default precision for float32 matmuls
and convolutions on these GPUs), HBM 4.8 TB/s on an H200 and 3.35 TB/s
otherwise.
"""
import argparse
import gc
import os
import pathlib
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / 'benchmarks'))
# The PyTorch references of dcgan_step/unet_step are not needed here, and
# importing torch on a GPU host would load its own CUDA libraries (cuDNN,
# cuBLAS) beside JAX's: make `import torch` fail, as where it is absent.
sys.modules.setdefault('torch', None)

# pylint: disable=g-import-not-at-top,wrong-import-position
import common
import dcgan_step
import mrigan_step
import unet_step
from mrseg.data import augment_jax
# pylint: enable=g-import-not-at-top,wrong-import-position

DTYPES = ('bfloat16', 'float32')  # bfloat16 first: the targets are bf16
PEAK_BF16_TFLOPS = 989.4
PEAK_FP32_TFLOPS = 494.7  # TF32 tensor cores
HBM_TBPS = {'H200': 4.8, 'default': 3.35}
# Paper 1's DCGAN schedule: 10 epochs x 3750 steps at batch 4.
DCGAN_SCHEDULE_STEPS = 37_500
# tf.data on one CPU core (benchmarks/README.md, input pipelines): 128x128
# examples per CPU-second with everything augmented, and without
# augmentation (gather + scale + batch).
HOST_AUGMENTED_RATE = 772.0
HOST_PLAIN_RATE = 8332.0
AUGMENT = dict(flip=True, rotation_degrees=15.0, elastic_alpha=2.0,
               elastic_sigma=10.0, intensity_scale=0.1, intensity_shift=0.05,
               gamma=0.2)
ISEG_VOLUME = (144, 192, 256)

# Targets of issue 15 (recorded, not enforced).
TARGETS = {
    'roofline_2d': 0.5, 'roofline_3d': 0.4, 'dcgan_schedule_s': 120.0,
    'sliding_window_s': 1.0, 'input_overhead': 0.05,
}


class Plan:
  """The sizes of a run: the real one, or --smoke's tiny configs."""

  def __init__(self, smoke: bool):
    self.smoke = smoke
    if smoke:
      self.variant_2d, self.variant_3d = 'test', 'test'
      self.batches_2d, self.batch_3d = (2,), 2
      self.patch = 8
      self.volume = (16, 16, 16)
      self.sliding_overrides = {'eval.window_size': '8'}
      self.steps, self.warmup = 1, 0
      self.augment_batches, self.augment_size = (2,), 32
      # One dtype: the code paths are the same for both, and CI's minute
      # does not hold two rounds of compilation.
      self.dtypes = DTYPES[:1]
    else:
      self.variant_2d, self.variant_3d = '', ''
      self.batches_2d, self.batch_3d = (4, 64, 256), None  # None: paper's 30
      self.patch = None
      self.volume = ISEG_VOLUME
      self.sliding_overrides = {}
      self.steps, self.warmup = 10, 2
      self.augment_batches, self.augment_size = (64, 256), 128
      self.dtypes = DTYPES


class Suite:
  """Runs measurements in order within a time budget; keeps the records."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.plan = Plan(args.smoke)
    self.start = time.perf_counter()
    self.records: list[dict[str, Any]] = []
    self.device = common.jax_device()
    kind = jax.devices()[0].device_kind
    self.hbm = (args.hbm_tbps or HBM_TBPS['H200' if 'H200' in kind else
                                          'default']) * 1e12
    self.peaks = {'bfloat16': args.peak_bf16_tflops * 1e12,
                  'float32': args.peak_fp32_tflops * 1e12}
    self.commit = common.git_commit()
    self.failed = 0
    self.host_cores = args.host_cores or common.num_cores()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def emit(self, record: dict[str, Any]) -> dict[str, Any]:
    record = {**record, 'device': self.device, 'commit': self.commit,
              'date': common.utc_now(), 'smoke': self.plan.smoke,
              'suite_elapsed_s': round(self.elapsed(), 1)}
    self.records.append(record)
    common.emit(record, self.args.jsonl)
    return record

  def measure(self, name: dict[str, Any],
              fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Runs fn() unless the budget is spent; records its result or error."""
    if self.elapsed() > self.args.budget_s:
      self.emit({**name, 'skipped': f'budget of {self.args.budget_s:.0f} s '
                 'spent'})
      return None
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      # One failure (e.g. out of memory at batch 256) must not cost the
      # window's other measurements.
      self.failed += 1
      self.emit({**name, 'error': f'{type(e).__name__}: {e}'[:2000]})
      traceback.print_exc()
      return None
    finally:
      gc.collect()
    return self.emit({**name, **result})

  def timed(self, call: Callable[[], Any], examples: float,
            flops: float | None, bytes_: float | None, dtype: str
            ) -> dict[str, Any]:
    """Times `call` and adds the FLOP and roofline fields."""
    times = common.time_calls({'x': call}, self.plan.steps,
                              self.plan.warmup)['x']
    median = statistics.median(times)
    return {
        **common.timing_fields(examples, times, flops),
        'bytes_per_step': bytes_,
        'achieved_bytes_per_s': bytes_ / median if bytes_ else None,
        **common.roofline_fields(flops, bytes_, median, self.peaks[dtype],
                                 self.hbm),
        'peak_flops_per_s': self.peaks[dtype], 'hbm_bytes_per_s': self.hbm,
        'steps': self.plan.steps, 'times_ms': common.times_ms(times),
    }

  def host_fields(self, batch: int, step_s: float, augmented: bool
                  ) -> dict[str, Any]:
    """The host pipeline's time per batch as a share of the step time."""
    plain = batch / (self.args.host_plain_rate * self.host_cores)
    fields = {'host_cores': self.host_cores,
              'host_share_plain': plain / step_s}
    if augmented:
      aug = batch / (self.args.host_augmented_rate * self.host_cores)
      fields['host_share_augmented'] = aug / step_s
    return fields

  # --------------------------------------------------------------------------
  # Measurements.

  def step_2d(self, model: str, batch: int, dtype: str) -> dict[str, Any]:
    """Paper 1's DCGAN or UNet train step."""
    overrides = dict(kv.split('=', 1) for kv in getattr(self.args,
                                                         f'set_{model}'))
    if model == 'dcgan':
      bench = dcgan_step.MrsegBench('train', batch, dtype, overrides,
                                    self.plan.variant_2d)
      extra = {'d_conv': bench.d_conv}
    else:
      bench = unet_step.MrsegBench('train', batch, dtype, overrides,
                                   self.plan.variant_2d)
      extra = {'conv': bench.conv}
    result = self.timed(bench.call, batch, bench.flops,
                        common.xla_bytes_accessed(bench.compiled), dtype)
    compile_s = round(bench.compile_s, 2)
    del bench
    return {**result, 'compile_s': compile_s, **extra,
            **self.host_fields(batch, result['step_time_ms'] / 1e3,
                               augmented=model == 'unet')}

  def overrides_3d(self) -> dict[str, str]:
    return dict(kv.split('=', 1) for kv in self.args.set_3d)

  def step_3d(self, kind: str, dtype: str) -> dict[str, Any]:
    config = mrigan_step.kind_config(kind, self.plan.variant_3d,
                                     self.plan.batch_3d, self.plan.patch,
                                     dtype, self.overrides_3d())
    bench = mrigan_step.TrainBench(config)
    result = self.timed(bench.call, bench.examples, bench.flops,
                        common.xla_bytes_accessed(bench.compiled), dtype)
    return {**result, 'batch': config.batch_size,
            'unlabelled_batch': config.unlabelled_batch_size if bench.gan
            else 0, 'patch': config.data.patch_size,
            'd_patches_per_step': bench.d_patches,
            'compile_s': round(bench.compile_s, 2),
            'xla_memory_bytes': bench.memory_bytes}

  def sliding_window(self, dtype: str) -> dict[str, Any]:
    config = mrigan_step.kind_config('supervised', self.plan.variant_3d, None,
                                     self.plan.patch, dtype,
                                     {**self.overrides_3d(),
                                      **self.plan.sliding_overrides})
    bench = mrigan_step.SlidingWindowBench(config, self.plan.volume)
    bytes_ = (bench.bytes_per_call * bench.calls if bench.bytes_per_call
              else None)
    result = self.timed(bench.call, bench.windows, bench.flops, bytes_, dtype)
    return {**result, 'volume': list(bench.volume), 'windows': bench.windows,
            'batch': bench.batch, 'patch': bench.window,
            'predict_calls': bench.calls,
            'seconds_per_volume': result['step_time_ms'] / 1e3,
            'compile_s': round(bench.compile_s, 2)}

  def augment(self, batch: int) -> dict[str, Any]:
    """The on-device 2D augmentation, everything on, on image + mask."""
    size = self.plan.augment_size
    fn = jax.jit(augment_jax.make_augment_2d(**AUGMENT, seed=0))
    k1, k2 = jax.random.split(jax.random.key(0))
    data = {'image': jax.random.uniform(k1, (batch, size, size, 1)),
            'mask': (jax.random.uniform(k2, (batch, size, size, 1)) < 0.05
                     ).astype(jnp.uint8)}
    indices = jnp.arange(batch, dtype=jnp.int32)
    start = time.perf_counter()
    compiled = fn.lower(data, indices).compile()
    compile_s = time.perf_counter() - start

    def call():
      jax.block_until_ready(compiled(data, indices))

    result = self.timed(call, batch, common.xla_flops(compiled),
                        common.xla_bytes_accessed(compiled), 'float32')
    return {**result, 'image_size': size, 'options': AUGMENT,
            'compile_s': round(compile_s, 2)}

  # --------------------------------------------------------------------------

  def run(self) -> list[dict[str, Any]]:
    p = self.plan
    for dtype in p.dtypes:
      for model in ('dcgan', 'unet'):
        for batch in p.batches_2d:
          name = {'bench': f'{model}_train_step', 'dtype': dtype,
                  'batch': batch, 'variant': p.variant_2d or 'paper'}
          self.measure(name, lambda m=model, b=batch, d=dtype: self.step_2d(
              m, b, d))
      for kind in self.args.kinds_3d:
        name = {'bench': 'mrigan_train_step', 'kind': kind, 'dtype': dtype,
                'variant': p.variant_3d or 'paper'}
        self.measure(name, lambda k=kind, d=dtype: self.step_3d(k, d))
      self.measure({'bench': 'sliding_window', 'dtype': dtype,
                    'variant': p.variant_3d or 'paper'},
                   lambda d=dtype: self.sliding_window(d))
      if dtype == DTYPES[0]:
        for batch in p.augment_batches:
          self.measure({'bench': 'augment_2d_device', 'dtype': 'float32',
                        'batch': batch},
                       lambda b=batch: self.augment(b))
    self.derived()
    return self.records

  def derived(self) -> None:
    """The DCGAN schedule's projection and the input pipeline's overhead."""
    for r in self.find('dcgan_train_step', batch=self.plan.batches_2d[0]):
      step_s = r['step_time_ms'] / 1e3
      self.emit({'bench': 'dcgan_schedule_projection', 'dtype': r['dtype'],
                 'batch': r['batch'], 'steps': DCGAN_SCHEDULE_STEPS,
                 'step_time_ms': r['step_time_ms'],
                 'projected_s': DCGAN_SCHEDULE_STEPS * step_s,
                 'target_s': TARGETS['dcgan_schedule_s']})
    for aug in self.find('augment_2d_device'):
      for r in self.find('unet_train_step', batch=aug['batch']):
        self.emit({'bench': 'input_overhead', 'model': 'unet',
                   'dtype': r['dtype'], 'batch': r['batch'],
                   'augment_ms': aug['step_time_ms'],
                   'step_time_ms': r['step_time_ms'],
                   'device_augment_overhead':
                       aug['step_time_ms'] / r['step_time_ms'],
                   'host_share_plain': r['host_share_plain'],
                   'host_share_augmented': r['host_share_augmented'],
                   'target': TARGETS['input_overhead']})

  def find(self, bench: str, **match) -> list[dict[str, Any]]:
    return [r for r in self.records if r['bench'] == bench
            and 'error' not in r and 'skipped' not in r
            and all(r.get(k) == v for k, v in match.items())]


# ----------------------------------------------------------------------------
# The markdown report.


def _num(x: Any, scale: float = 1.0, digits: int = 3) -> str:
  if x is None:
    return '-'
  x = x / scale
  if abs(x) >= 100:
    return f'{x:,.0f}'
  return f'{x:.{digits}g}'


def _pct(x: Any) -> str:
  return '-' if x is None else f'{100 * x:.1f}%'


def markdown(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
  """The results as markdown: steps, derived numbers, targets."""
  first = records[0] if records else {}
  lines = [
      f"# GPU suite: {first.get('device', '?')}, commit "
      f"{first.get('commit', '?')}, {first.get('date', '?')}"
      + (' (smoke: tiny configs)' if args.smoke else ''), '',
      f'Peaks: bf16 {args.peak_bf16_tflops} TFLOP/s, fp32 (TF32) '
      f'{args.peak_fp32_tflops} TFLOP/s, HBM '
      f"{_num(first.get('hbm_bytes_per_s'), 1e12)} TB/s. Roofline fraction = "
      'max(FLOPs / peak, bytes / bandwidth) / measured time.', '',
      '| bench | kind | dtype | batch | step (ms) | examples/s | GFLOP/step '
      '| GB/step | TFLOP/s | roofline | bound | compile (s) | host share '
      '(aug / plain) |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | '
      '--- | --- |',
  ]
  steps = ('dcgan_train_step', 'unet_train_step', 'mrigan_train_step',
           'sliding_window', 'augment_2d_device')
  for r in records:
    if r['bench'] not in steps:
      continue
    kind = r.get('kind') or r.get('conv') or r.get('d_conv') or ''
    if 'error' in r or 'skipped' in r:
      lines.append(f"| {r['bench']} | {kind} | {r.get('dtype', '')} | "
                   f"{r.get('batch', '')} | "
                   f"{'error' if 'error' in r else 'skipped'}: "
                   f"{(r.get('error') or r.get('skipped'))[:80]} |"
                   + ' |' * 8)
      continue
    host = '-'
    if 'host_share_plain' in r:
      host = (_pct(r.get('host_share_augmented')) + ' / '
              + _pct(r['host_share_plain']))
    lines.append(
        f"| {r['bench']} | {kind} | {r['dtype']} | {r.get('batch', '')} | "
        f"{_num(r['step_time_ms'])} | {_num(r['examples_per_s'])} | "
        f"{_num(r['flops_per_step'], 1e9)} | "
        f"{_num(r['bytes_per_step'], 1e9)} | "
        f"{_num(r['achieved_flops_per_s'], 1e12)} | "
        f"{_pct(r['roofline_fraction'])} | {r['bound'] or '-'} | "
        f"{_num(r.get('compile_s'))} | {host} |")
  lines += ['', '## Derived', '']
  for r in records:
    if r['bench'] == 'dcgan_schedule_projection':
      lines.append(f"- Paper 1's DCGAN schedule ({r['steps']:,} steps at "
                   f"batch {r['batch']}, {r['dtype']}): projected "
                   f"{r['projected_s']:.0f} s (target <= {r['target_s']:.0f}"
                   ' s; compilation apart).')
    if r['bench'] == 'input_overhead':
      lines.append(
          f"- UNet {r['dtype']} batch {r['batch']}: on-device augmentation "
          f"{r['augment_ms']:.3g} ms = {_pct(r['device_augment_overhead'])} "
          f"of the {r['step_time_ms']:.3g} ms step (target < "
          f"{_pct(r['target'])}); host tf.data share with host augmentation "
          f"{_pct(r['host_share_augmented'])}, without "
          f"{_pct(r['host_share_plain'])} (over 100% the step waits).")
  lines += ['', '## Targets', '', '| target | measured | met |',
            '| --- | --- | --- |']
  for text, value, ok in _targets(records):
    lines.append(f"| {text} | {value} | {ok} |")
  return '\n'.join(lines) + '\n'


def _targets(records):
  """(target, measured, met) rows from the records (issue 15's targets)."""
  ok = lambda good: 'yes' if good else 'no'  # noqa: E731
  done = [r for r in records if 'error' not in r and 'skipped' not in r]
  for bench, label in (('unet_train_step', 'UNet 2D'),
                       ('dcgan_train_step', 'DCGAN')):
    for r in done:
      if r['bench'] == bench and r['dtype'] == 'bfloat16' and r['batch'] >= 64:
        f = r['roofline_fraction']
        yield (f"{label} bf16 batch {r['batch']}: >= 50% of roofline",
               _pct(f), ok(f is not None and f >= TARGETS['roofline_2d']))
  for r in done:
    if r['bench'] == 'dcgan_schedule_projection':
      yield (f"DCGAN schedule ({r['dtype']}) <= 2 min",
             f"{r['projected_s']:.0f} s",
             ok(r['projected_s'] <= TARGETS['dcgan_schedule_s']))
    if r['bench'] == 'mrigan_train_step' and r['dtype'] == 'bfloat16':
      f = r['roofline_fraction']
      yield (f"3D {r['kind']} bf16 batch {r['batch']}: >= 40% of roofline",
             _pct(f), ok(f is not None and f >= TARGETS['roofline_3d']))
    if r['bench'] == 'sliding_window':
      yield (f"sliding window {'x'.join(map(str, r['volume']))} "
             f"({r['dtype']}) <= 1 s", f"{r['seconds_per_volume']:.3g} s",
             ok(r['seconds_per_volume'] <= TARGETS['sliding_window_s']))
    if r['bench'] == 'input_overhead':
      yield (f"input overhead, UNet {r['dtype']} batch {r['batch']} "
             '(on-device augmentation) < 5%',
             _pct(r['device_augment_overhead']),
             ok(r['device_augment_overhead'] < TARGETS['input_overhead']
                and r['host_share_plain'] < 1))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--smoke', action='store_true',
                      help='tiny configs, one step each: every code path on '
                      'a CPU in seconds (CI)')
  parser.add_argument('--out-dir', default=str(ROOT / 'benchmarks' /
                                               'results'),
                      help='where gpu_suite_<date>.{jsonl,md} go')
  parser.add_argument('--budget-s', type=float, default=400.0,
                      help='start no measurement after this many seconds '
                      '(the rest are recorded as skipped); 400 keeps the '
                      'whole run under 8 minutes on an H100/H200')
  parser.add_argument('--kinds-3d', nargs='+', choices=mrigan_step.KINDS,
                      default=['supervised', 'mrigan'])
  parser.add_argument('--set-dcgan', nargs='*', default=None,
                      metavar='KEY=VALUE',
                      help='overrides of configs/dcgan.py (default on an '
                      'accelerator: model.discriminator.conv=xla)')
  parser.add_argument('--set-unet', nargs='*', default=None,
                      metavar='KEY=VALUE',
                      help='overrides of configs/unet.py (default on an '
                      'accelerator: model.conv=xla)')
  parser.add_argument('--set-3d', nargs='*', default=None,
                      metavar='KEY=VALUE',
                      help='overrides of configs/tissue_base.py (default on '
                      'an accelerator: model.discriminator.conv=xla '
                      'model.generator.conv=xla)')
  parser.add_argument('--peak-bf16-tflops', type=float,
                      default=PEAK_BF16_TFLOPS)
  parser.add_argument('--peak-fp32-tflops', type=float,
                      default=PEAK_FP32_TFLOPS,
                      help='TF32 by default (XLA runs float32 matmuls and '
                      'convolutions on TF32 tensor cores); 67 for strict FP32')
  parser.add_argument('--hbm-tbps', type=float, default=None,
                      help='HBM bandwidth in TB/s (default: 4.8 on an H200, '
                      'else 3.35, the H100 SXM)')
  parser.add_argument('--host-cores', type=int, default=None,
                      help='CPU cores feeding tf.data (default: this '
                      "process's)")
  parser.add_argument('--host-augmented-rate', type=float,
                      default=HOST_AUGMENTED_RATE,
                      help='augmented 128x128 examples per CPU-second')
  parser.add_argument('--host-plain-rate', type=float, default=HOST_PLAIN_RATE,
                      help='unaugmented 128x128 examples per CPU-second')
  args = parser.parse_args(argv)
  if args.smoke:
    # Tiny configs are compile-bound: XLA's optimisations cost more than
    # they save (as in tests/conftest.py).
    jax.config.update('jax_disable_most_optimizations', True)
  accelerator = jax.default_backend() != 'cpu'
  # XLA's own convolutions on accelerators (fast_grad, the configs'
  # default, is a CPU trick: an im2col matmul for the kernel gradient).
  if args.set_dcgan is None:
    args.set_dcgan = ['model.discriminator.conv=xla'] if accelerator else []
  if args.set_unet is None:
    args.set_unet = ['model.conv=xla'] if accelerator else []
  # Likewise depth_to_channels, the 3D configs' default: 3D convolutions as
  # 2D ones, for XLA:CPU's 2D fast path.
  if args.set_3d is None:
    args.set_3d = (['model.discriminator.conv=xla', 'model.generator.conv=xla']
                   if accelerator else [])
  os.makedirs(args.out_dir, exist_ok=True)
  stem = 'gpu_suite_' + ('smoke_' if args.smoke else '') + time.strftime(
      '%Y-%m-%d_%H%M%S', time.gmtime())
  args.jsonl = os.path.join(args.out_dir, stem + '.jsonl')
  suite = Suite(args)
  records = suite.run()
  report = markdown(records, args)
  md_path = os.path.join(args.out_dir, stem + '.md')
  with open(md_path, 'w') as f:
    f.write(report)
  print(report, flush=True)
  print(f'Wrote {args.jsonl} and {md_path} in {suite.elapsed():.0f} s.',
        flush=True)
  return 1 if suite.failed else 0


if __name__ == '__main__':
  sys.exit(main())
