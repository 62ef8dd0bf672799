r"""Throughput of paper 1's UNet: mrseg's train step and inference vs PyTorch.

Prints one JSON line per (bench, impl, batch, dtype):

  {"bench": "unet_train_step" | "unet_inference", "impl": "mrseg" | "torch",
   "batch": B, "dtype": ..., "examples_per_s": ..., "step_time_ms": ...,
   "flops_per_step": ..., "achieved_flops_per_s": ..., "device": ...,
   "commit": ..., "date": ...}

The network is the paper's (`configs/unet.py`: 128x128x1 input, 2 classes,
base 64 features, depth 4 = 64-128-256-512-1024, dropout 0.5 at the
bottleneck, 31,030,658 parameters). The mrseg train step is
`mrseg.train.unet_trainer.make_train_step` (pixel-wise CE, Adam, per-example
dropout keys), jitted with the state donated; inference is the jitted
`model.apply(train=False)`. Inputs are synthetic and already on the device;
FLOPs come from XLA's cost analysis of the compiled function.

The PyTorch reference (`TorchUNet` below: the same layers, 'same' padding,
ConvTranspose2d 2x2/2 up-convolutions, CE, Adam; eager, channels-first, CPU,
`torch.set_num_threads` = the cores this process may use) runs in the same
process when torch is importable, its timed calls interleaved with mrseg's,
so that a machine shared with other jobs slows both alike and the ratio of
one run means something. Its FLOPs come from `torch.utils.flop_counter`.
Times are medians over `--steps` calls after `--warmup` untimed ones
(compilation excluded), each ended by `jax.block_until_ready`.

  # CPU, both implementations, batch 4 and 64 (the README's table):
  python benchmarks/unet_step.py --batch 4 64 --steps 3 \
    --out benchmarks/results/cpu_unet_$(date +%F).jsonl
  # A/B: nn.ConvTranspose instead of the sub-pixel up-convolution, or
  # XLA's convolutions instead of the config's default, whose kernel
  # gradient is a matmul (model.conv=fast_grad, convs.FastGradConv)
  python benchmarks/unet_step.py --impl mrseg --batch 4 \
    --set model.upsample=conv_transpose
  python benchmarks/unet_step.py --batch 4 --bench train --conv xla
  # GPU (jax[cuda] installed): mrseg only, bfloat16 compute
  python benchmarks/unet_step.py --impl mrseg --dtype bfloat16 --batch 64 256

torch is not an mrseg requirement; install it into the venv to measure:
`pip install torch==2.13.0` (CPU wheel).
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
from configs import unet as unet_config
from mrseg import overrides as overrides_lib
from mrseg.train import unet_model
from mrseg.train import unet_trainer
# pylint: enable=g-import-not-at-top,wrong-import-position

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError:  # torch is optional: only the reference needs it
  torch = None

BENCHES = ('train', 'inference')


def paper_config(batch: int, dtype: str, overrides: dict[str, str],
                 variant: str = ''):
  config = unet_config.get_config(variant)
  config.batch_size = batch
  config.model.dtype = dtype
  # e.g. model.upsample=conv_transpose, for A/B runs.
  return overrides_lib.apply(config, overrides, parse=True)


class MrsegBench:
  """The jitted mrseg train step or inference with its inputs, ready to time."""

  def __init__(self, bench: str, batch: int, dtype: str,
               overrides: dict[str, str], variant: str = ''):
    config = paper_config(batch, dtype, overrides, variant)
    self.conv = config.model.conv
    key = jax.random.key(0)
    size, channels = config.data.image_size, config.data.channels
    state = unet_trainer.create_state(config, key)
    # Synthetic images and masks (~3 % tumour), made on the device.
    images = jax.random.uniform(jax.random.key(1),
                                (batch, size, size, channels), jnp.float32)
    masks = (jax.random.uniform(jax.random.key(2), (batch, size, size, 1))
             < 0.03).astype(jnp.uint8)
    if bench == 'train':
      step = jax.jit(unet_trainer.make_train_step(config), donate_argnums=0)
      batch_ = {'image': images, 'mask': masks}
      start = time.perf_counter()
      self.compiled = step.lower(state, batch_, key).compile()
      self.compile_s = time.perf_counter() - start
      self.state = state

      def call():
        self.state, metrics = self.compiled(self.state, batch_, key)
        jax.block_until_ready((self.state, metrics))
    else:
      model = unet_model.build_model(config)
      apply = jax.jit(lambda variables, x: model.apply(variables, x))
      variables = state.net.variables
      start = time.perf_counter()
      self.compiled = apply.lower(variables, images).compile()
      self.compile_s = time.perf_counter() - start

      def call():
        jax.block_until_ready(self.compiled(variables, images))
    self.call = call
    self.flops = common.xla_flops(self.compiled)
    self.device = common.jax_device()


if torch is not None:

  class TorchUNet(nn.Module):
    """The paper's UNet in PyTorch (NCHW), the same layers as mrseg's."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2,
                 base: int = 64, depth: int = 4, dropout: float = 0.5):
      super().__init__()

      def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

      features = [base * 2**i for i in range(depth + 1)]
      self.down = nn.ModuleList()
      c = in_channels
      for f in features[:-1]:
        self.down.append(block(c, f))
        c = f
      self.bottleneck = block(c, features[-1])
      self.dropout = nn.Dropout(dropout)
      self.upconv = nn.ModuleList()
      self.up = nn.ModuleList()
      for f in reversed(features[:-1]):
        self.upconv.append(nn.ConvTranspose2d(2 * f, f, 2, stride=2))
        self.up.append(block(2 * f, f))
      self.logits = nn.Conv2d(features[0], num_classes, 1)

    def forward(self, x):
      skips = []
      for block in self.down:
        x = block(x)
        skips.append(x)
        x = F.max_pool2d(x, 2)
      x = self.dropout(self.bottleneck(x))
      for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
        x = block(torch.cat([skip, upconv(x)], dim=1))
      return self.logits(x)


class TorchBench:
  """The PyTorch reference's train step or inference, ready to time."""

  def __init__(self, bench: str, batch: int, dtype: str):
    if dtype != 'float32':
      raise ValueError('The PyTorch reference runs float32 only.')
    torch.manual_seed(0)
    model = TorchUNet()
    images = torch.rand(batch, 1, 128, 128)
    labels = (torch.rand(batch, 128, 128) < 0.03).long()
    if bench == 'train':
      model.train()
      optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)

      def call():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.item()
    else:
      model.eval()

      def call():
        with torch.no_grad():
          return model(images)
    self.call = call
    # Count one call's FLOPs once, outside the timed calls.
    from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
      self.call()
    self.flops = float(counter.get_total_flops())
    self.device = f'cpu x{torch.get_num_threads()} threads (torch)'


def run(bench: str, batch: int, dtype: str, impls: list[str], steps: int,
        warmup: int, overrides: dict[str, str]) -> list[dict[str, Any]]:
  """Times the implementations, interleaved call by call; one record each."""
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
        'bench': 'unet_train_step' if bench == 'train' else 'unet_inference',
        'impl': name, 'batch': batch, 'dtype': dtype,
        **common.timing_fields(batch, times[name], r.flops),
        'device': r.device, 'commit': common.git_commit(), 'date': date,
        'steps': steps, 'times_ms': common.times_ms(times[name]),
        'overrides': (overrides or None) if name == 'mrseg' else None,
        'conv': r.conv if name == 'mrseg' else None,
    })
  return records


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, nargs='+', default=[4, 64])
  parser.add_argument('--bench', nargs='+', choices=BENCHES,
                      default=list(BENCHES))
  parser.add_argument('--impl', nargs='+', choices=('mrseg', 'torch'),
                      default=None, help='default: mrseg, plus torch when it '
                      'is installed and JAX runs on the CPU')
  parser.add_argument('--dtype', default='float32',
                      choices=('float32', 'bfloat16'))
  parser.add_argument('--steps', type=int, default=3, help='timed calls')
  parser.add_argument('--warmup', type=int, default=1, help='untimed calls')
  parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                      help='config overrides for mrseg, e.g. '
                      'model.upsample=conv_transpose')
  parser.add_argument('--conv', default=None, choices=('xla', 'fast_grad'),
                      help="mrseg UNet convolutions (model.conv): XLA's, or "
                      'convs.FastGradConv with matmul kernel gradients '
                      "(default: the config's, fast_grad)")
  parser.add_argument('--out', default=None,
                      help='also append the JSON lines to this file')
  args = parser.parse_args(argv)

  impls = args.impl
  if impls is None:
    impls = ['mrseg']
    if torch is not None and jax.default_backend() == 'cpu':
      impls.append('torch')
  if 'torch' in impls:
    if torch is None:
      sys.exit('--impl torch needs PyTorch, which mrseg does not require: '
               'pip install torch==2.13.0 (CPU wheel), then rerun.')
    torch.set_num_threads(common.num_cores())
  overrides = dict(kv.split('=', 1) for kv in args.set)
  if args.conv:
    overrides['model.conv'] = args.conv

  records = []
  for bench in args.bench:
    for batch in args.batch:
      for record in run(bench, batch, args.dtype, impls, args.steps,
                        args.warmup, overrides):
        common.emit(record, args.out)
        records.append(record)
  return records


if __name__ == '__main__':
  main()
