r"""PyTorch reference of paper 1's DCGAN train step, for throughput comparison.

The same networks as `mrseg.models.dcgan` (Generator 27,265,281 parameters,
Discriminator 582,785) and the same step as `mrseg.train.dcgan_trainer`,
written the way the paper's Keras code trains:

  1. fake = G(z1), detached; D takes one Adam step on
     BCE(D(real), 1) + BCE(D(fake), 0)  (BCE on logits, dropout on);
  2. G takes one Adam step on the non-saturating BCE(D(G(z2)), 1) against the
     updated D, whose weights are frozen (Keras' `d_model.trainable = False`,
     so no discriminator weight gradients are computed).

Adam lr 2e-4, b1 0.5, b2 0.999, eps 1e-7 (Keras' epsilon), CPU, eager, with
`torch.set_num_threads` = the cores this process may use. Only the
arithmetic matters here: 'same' padding offsets may differ from Keras', which
changes no shape, parameter count or FLOP count.

torch is not an mrseg requirement; install it into the venv to measure:

  pip install torch==2.13.0     # (--find-links /opt/wheels for a local wheel)
  python benchmarks/torch_dcgan.py --batch 4 --steps 5
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Any
import warnings

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
  # The padded copy that torch warns about for an even 'same' kernel is
  # part of what Keras computes too.
  warnings.filterwarnings('ignore', message=".*padding='same' with even")
except ImportError:  # torch is optional: only this reference needs it
  torch = None


def require_torch() -> None:
  if torch is None:
    sys.exit('benchmarks/torch_dcgan.py needs PyTorch, which mrseg does not '
             'require: pip install torch==2.13.0 (CPU wheel), then rerun.')


def num_cores() -> int:
  """Cores this process may run on (the affinity mask, not the host's)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


if torch is not None:

  class Generator(nn.Module):
    """z [B, 100] -> images [B, 1, 128, 128] in [-1, 1] (NCHW)."""

    def __init__(self, noise_dim: int = 100, base: int = 32, feat: int = 256,
                 up: tuple[int, ...] = (128, 128), out_channels: int = 1):
      super().__init__()
      self.base, self.feat = base, feat
      self.project = nn.Linear(noise_dim, base * base * feat)
      ups, c = [], feat
      for f in up:
        # k=4, s=2, p=1 doubles the size, like Keras' 'same'.
        ups.append(nn.ConvTranspose2d(c, f, 4, stride=2, padding=1))
        c = f
      self.ups = nn.ModuleList(ups)
      # Keras' 'same' for an even kernel pads (1, 2), as torch's 'same' does.
      self.out = nn.Conv2d(c, out_channels, 4, padding='same')

    def forward(self, z):
      x = F.leaky_relu(self.project(z), 0.2)
      x = x.view(-1, self.feat, self.base, self.base)
      for up in self.ups:
        x = F.leaky_relu(up(x), 0.2)
      return torch.tanh(self.out(x))

  class Discriminator(nn.Module):
    """Images [B, 1, 128, 128] -> one logit per image, [B]."""

    def __init__(self, in_channels: int = 1, size: int = 128,
                 features: tuple[int, ...] = (64, 128, 128, 256),
                 strides: tuple[int, ...] = (1, 2, 2, 2)):
      super().__init__()
      convs, c = [], in_channels
      for f, s in zip(features, strides):
        convs.append(nn.Conv2d(c, f, 3, stride=s, padding=1))
        c, size = f, size // s
      self.convs = nn.ModuleList(convs)
      self.dropout = nn.Dropout(0.4)
      self.logit = nn.Linear(c * size * size, 1)

    def forward(self, x):
      for conv in self.convs:
        x = F.leaky_relu(conv(x), 0.2)
      return self.logit(self.dropout(x.flatten(1)))[:, 0]


def count_params(module: Any) -> int:
  return sum(p.numel() for p in module.parameters())


class Trainer:
  """Both networks, both Adams and one train step, as the Keras code does."""

  def __init__(self, noise_dim: int = 100, seed: int = 0, dtype: str = 'float32'):
    require_torch()
    torch.manual_seed(seed)
    self.noise_dim = noise_dim
    self.dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[dtype]
    self.gen = Generator(noise_dim)
    self.disc = Discriminator()
    adam = dict(lr=2e-4, betas=(0.5, 0.999), eps=1e-7)
    self.g_opt = torch.optim.Adam(self.gen.parameters(), **adam)
    self.d_opt = torch.optim.Adam(self.disc.parameters(), **adam)
    self.gen.train()
    self.disc.train()

  def _autocast(self):
    # bfloat16 as mixed precision (float32 master weights), like mrseg's
    # model.dtype, which keeps float32 params and computes in bfloat16.
    return torch.autocast('cpu', dtype=torch.bfloat16,
                          enabled=self.dtype == torch.bfloat16)

  def step(self, real) -> dict[str, float]:
    """One D step then one G step on a real batch [B, 1, H, W]."""
    n = real.shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n)
    with self._autocast():
      with torch.no_grad():
        fake = self.gen(torch.randn(n, self.noise_dim))
      self.d_opt.zero_grad(set_to_none=True)
      d_loss = (F.binary_cross_entropy_with_logits(self.disc(real).float(), ones)
                + F.binary_cross_entropy_with_logits(self.disc(fake).float(),
                                                     zeros))
    d_loss.backward()
    self.d_opt.step()

    self.disc.requires_grad_(False)  # Keras: d_model.trainable = False
    with self._autocast():
      self.g_opt.zero_grad(set_to_none=True)
      logits = self.disc(self.gen(torch.randn(n, self.noise_dim)))
      g_loss = F.binary_cross_entropy_with_logits(logits.float(), ones)
    g_loss.backward()
    self.g_opt.step()
    self.disc.requires_grad_(True)
    return {'d_loss': d_loss.item(), 'g_loss': g_loss.item()}

  def sample(self, n: int):
    with torch.no_grad(), self._autocast():
      return self.gen(torch.randn(n, self.noise_dim))


def time_calls(fn, warmup: int, steps: int) -> list[float]:
  """Seconds per call of `fn()`, after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  args = parser.parse_args()
  require_torch()
  torch.set_num_threads(num_cores())
  trainer = Trainer(dtype=args.dtype)
  real = torch.rand(args.batch, 1, 128, 128) * 2 - 1
  times = time_calls(lambda: trainer.step(real), args.warmup, args.steps)
  t = statistics.median(times)
  print(json.dumps({
      'bench': 'dcgan_train_step', 'impl': 'torch', 'batch': args.batch,
      'dtype': args.dtype, 'examples_per_s': args.batch / t,
      'step_time_ms': t * 1e3, 'threads': torch.get_num_threads(),
      'g_params': count_params(trainer.gen),
      'd_params': count_params(trainer.disc)}))


if __name__ == '__main__':
  main()
