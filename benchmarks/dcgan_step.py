r"""Throughput of paper 1's DCGAN: mrseg's train step and sampler vs PyTorch.

Prints one JSON line per (bench, impl, batch, dtype):

  {"bench": "dcgan_train_step" | "dcgan_sampler", "impl": "mrseg" | "torch",
   "batch": B, "dtype": ..., "examples_per_s": ..., "step_time_ms": ...,
   "flops_per_step": ..., "achieved_flops_per_s": ..., "device": ...,
   "commit": ..., "date": ...}

The mrseg step is `mrseg.train.dcgan_trainer.make_train_step` on the paper
config (`configs/dcgan.py`), jitted with the state donated, fed a synthetic
batch that already lives on the device; FLOPs come from XLA's cost analysis
of the compiled step. The PyTorch reference (`benchmarks/torch_dcgan.py`, the
same networks and step, eager, CPU) runs in the same process when torch is
importable, its timed steps interleaved with mrseg's, so that a machine
shared with other jobs slows both alike and the ratio of one run means
something; its FLOPs come from `torch.utils.flop_counter`. Times are
medians over `--steps` calls after `--warmup` untimed ones (compilation
excluded), each ended by `jax.block_until_ready`.

  # CPU, both implementations, batch 4 and 64 (the README's table):
  python benchmarks/dcgan_step.py --batch 4 64 --steps 5 \
    --out benchmarks/results/cpu_dcgan_$(date +%F).jsonl
  # GPU (jax[cuda] installed): mrseg only, bfloat16 compute
  python benchmarks/dcgan_step.py --impl mrseg --dtype bfloat16 --batch 64 256
"""
import argparse
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / 'benchmarks'))

# pylint: disable=g-import-not-at-top,wrong-import-position
import common
from configs import dcgan as dcgan_config
from mrseg import overrides as overrides_lib
from mrseg.train import dcgan_trainer
import torch_dcgan
# pylint: enable=g-import-not-at-top,wrong-import-position

BENCHES = ('train', 'sampler')


class MrsegBench:
  """The jitted mrseg train step or sampler with its inputs, ready to time."""

  def __init__(self, bench: str, batch: int, dtype: str,
               overrides: dict[str, str], variant: str = ''):
    config = dcgan_config.get_config(variant)
    config.batch_size = batch
    config.model.dtype = dtype
    # e.g. model.generator.upsample=conv_transpose, for A/B runs.
    overrides_lib.apply(config, overrides, parse=True)
    self.d_conv = config.model.discriminator.conv
    key = jax.random.key(0)
    size, channels = config.data.image_size, config.data.channels
    state = dcgan_trainer.create_state(config, key)
    if bench == 'train':
      step = jax.jit(dcgan_trainer.make_train_step(config), donate_argnums=0)
      # Synthetic images in [-1, 1], made on the device: no host copies.
      batch_ = {'image': jax.random.uniform(
          jax.random.key(1), (batch, size, size, channels), jnp.float32,
          -1.0, 1.0)}
      start = time.perf_counter()
      self.compiled = step.lower(state, batch_, key).compile()
      self.compile_s = time.perf_counter() - start
      self.state = state

      def call():
        self.state, metrics = self.compiled(self.state, batch_, key)
        jax.block_until_ready((self.state, metrics))
    else:
      generate = dcgan_trainer.make_generate_fn(config)
      keys = jax.random.split(jax.random.key(2), batch)
      start = time.perf_counter()
      self.compiled = generate.lower(state.gen.params, keys).compile()
      self.compile_s = time.perf_counter() - start
      params = state.gen.params

      def call():
        jax.block_until_ready(self.compiled(params, keys))
    self.call = call
    self.flops = common.xla_flops(self.compiled)
    self.device = common.jax_device()


class TorchBench:
  """The PyTorch reference's train step or sampler, ready to time."""

  def __init__(self, bench: str, batch: int, dtype: str):
    trainer = torch_dcgan.Trainer(dtype=dtype)
    torch = torch_dcgan.torch
    real = torch.rand(batch, 1, 128, 128) * 2 - 1
    if bench == 'train':
      self.call = lambda: trainer.step(real)
    else:
      self.call = lambda: trainer.sample(batch)
    # Count one call's FLOPs once, outside the timed calls.
    from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
      self.call()
    self.flops = float(counter.get_total_flops())
    self.device = f'cpu x{torch.get_num_threads()} threads (torch)'


def run(bench: str, batch: int, dtype: str, impls: list[str], steps: int,
        warmup: int, overrides: dict[str, str]) -> list[dict[str, Any]]:
  """Times the implementations, interleaved step by step; one record each."""
  runners: dict[str, Any] = {}
  if 'mrseg' in impls:
    runners['mrseg'] = MrsegBench(bench, batch, dtype, overrides)
  if 'torch' in impls:
    runners['torch'] = TorchBench(bench, batch, dtype)
  times = common.time_calls({name: r.call for name, r in runners.items()},
                            steps, warmup)
  records = []
  date = common.utc_now()
  for name, r in runners.items():
    records.append({
        'bench': f'dcgan_{bench}' + ('_step' if bench == 'train' else ''),
        'impl': name, 'batch': batch, 'dtype': dtype,
        **common.timing_fields(batch, times[name], r.flops),
        'device': r.device, 'commit': common.git_commit(), 'date': date,
        'steps': steps, 'times_ms': common.times_ms(times[name]),
        'overrides': overrides or None, 'd_conv': getattr(r, 'd_conv', None),
    })
  return records


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, nargs='+', default=[4, 64])
  parser.add_argument('--bench', nargs='+', choices=BENCHES, default=list(BENCHES))
  parser.add_argument('--impl', nargs='+', choices=('mrseg', 'torch'),
                      default=None, help='default: mrseg, plus torch when it '
                      'is installed and JAX runs on the CPU')
  parser.add_argument('--dtype', default='float32',
                      choices=('float32', 'bfloat16'))
  parser.add_argument('--steps', type=int, default=5, help='timed calls')
  parser.add_argument('--warmup', type=int, default=1, help='untimed calls')
  parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                      help='config overrides for mrseg, e.g. '
                      'model.generator.upsample=conv_transpose')
  parser.add_argument('--d-conv', default=None, choices=('xla', 'fast_grad'),
                      help='shorthand for --set model.discriminator.conv=NAME')
  parser.add_argument('--out', default=None,
                      help='also append the JSON lines to this file')
  args = parser.parse_args(argv)

  impls = args.impl
  if impls is None:
    impls = ['mrseg']
    if torch_dcgan.torch is not None and jax.default_backend() == 'cpu':
      impls.append('torch')
  if 'torch' in impls:
    torch_dcgan.require_torch()
    torch_dcgan.torch.set_num_threads(torch_dcgan.num_cores())
  overrides = dict(kv.split('=', 1) for kv in args.set)
  if args.d_conv:
    overrides['model.discriminator.conv'] = args.d_conv

  for bench in args.bench:
    for batch in args.batch:
      for record in run(bench, batch, args.dtype, impls, args.steps,
                        args.warmup, overrides):
        common.emit(record, args.out)


if __name__ == '__main__':
  main()
