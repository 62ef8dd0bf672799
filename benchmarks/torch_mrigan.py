r"""PyTorch reference of paper 2's 3D segmenter step, for throughput comparison.

The same network as `mrseg.models.mrigan.SegDiscriminator` at Mondal's sizes
(features 32, 64, 128, 256; two 'same' 3x3x3 convolutions per level,
LeakyReLU 0.2, 2x average pooling, 2x2x2 stride-2 up-convolutions that keep
the channel count, skip concatenation, a 3x3x3 output convolution; weight
normalisation on every layer: 6,530,760 parameters with T1 + T2 inputs and
K = 4) and the same supervised step as `mrseg.train.mrigan_trainer`
('supervised' kind): class-weighted cross-entropy over the voxels (Mondal's
weights 0.33, 1.5, 0.83, 1.33; mean over voxels, label 255 ignored), one Adam
step (lr 1e-4, b1 0.5, b2 0.999, eps 1e-8). CPU, eager, channels first
(PyTorch's default layout), `torch.set_num_threads` = the cores this process
may use. Weight normalisation is `torch.nn.utils.parametrizations
.weight_norm` (g initialised to ||v||, not to 1 as in flax: another starting
point, the same arithmetic per step).

torch is not an mrseg requirement; install it beside mrseg to measure:

  pip install torch==2.13.0     # (--find-links /opt/wheels for a local wheel)
  python benchmarks/torch_mrigan.py --batch 4 --steps 3
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError:  # torch is optional: only this reference needs it
  torch = None

# Mondal et al.'s class weights (background, CSF, GM, WM); mrseg's config.
CLASS_WEIGHTS = (0.33, 1.5, 0.83, 1.33)
IGNORE_LABEL = 255


def require_torch() -> None:
  if torch is None:
    sys.exit('benchmarks/torch_mrigan.py needs PyTorch, which mrseg does not '
             'require: pip install torch==2.13.0 (CPU wheel), then rerun.')


def num_cores() -> int:
  """Cores this process may run on (the affinity mask, not the host's)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


if torch is not None:

  class SegDiscriminator(nn.Module):
    """Patches [B, C, X, Y, Z] -> logits [B, K, X, Y, Z] (channels first).

    The arguments are `mrseg.models.mrigan.SegDiscriminator`'s attributes
    (odd kernels, up-convolutions of kernel 2 and stride 2).
    """

    def __init__(self, in_channels: int = 2, num_classes: int = 4,
                 features: tuple[int, ...] = (32, 64, 128, 256),
                 convs_per_level: int = 2, kernel_size: int = 3,
                 up_kernel: int = 2, out_kernel: int = 3, pool: str = 'avg',
                 negative_slope: float = 0.2, weight_norm: bool = True,
                 dropout_rate: float = 0.0):
      super().__init__()
      if kernel_size % 2 == 0 or out_kernel % 2 == 0 or up_kernel != 2:
        raise ValueError(
            'The torch reference has odd convolution kernels and 2x2x2 '
            f'up-convolutions; got kernel_size={kernel_size}, '
            f'out_kernel={out_kernel}, up_kernel={up_kernel}.')
      self.slope = negative_slope
      self.pool = F.avg_pool3d if pool == 'avg' else F.max_pool3d
      # Weight norm per output channel: dim 0 of Conv3d's [out, in, ...],
      # dim 1 of ConvTranspose3d's [in, out, ...].
      wn = ((lambda m, dim: nn.utils.parametrizations.weight_norm(m, dim=dim))
            if weight_norm else (lambda m, dim: m))
      conv = lambda i, o, k: wn(nn.Conv3d(i, o, k, padding=k // 2), 0)
      self.enc = nn.ModuleList()
      c = in_channels
      for f in features:
        level = nn.ModuleList()
        for _ in range(convs_per_level):
          level.append(conv(c, f, kernel_size))
          c = f
        self.enc.append(level)
      self.up = nn.ModuleList()
      self.dec = nn.ModuleList()
      for f in reversed(features[:-1]):
        # Mondal's up-convolutions keep the channel count.
        self.up.append(wn(nn.ConvTranspose3d(c, c, 2, stride=2), 1))
        level = nn.ModuleList()
        c = c + f
        for _ in range(convs_per_level):
          level.append(conv(c, f, kernel_size))
          c = f
        self.dec.append(level)
      self.dropout = nn.Dropout3d(dropout_rate)
      self.logits = conv(c, num_classes, out_kernel)

    def forward(self, x):
      act = lambda h: F.leaky_relu(h, self.slope)
      skips = []
      for i, level in enumerate(self.enc):
        if i:
          x = self.pool(x, 2)
        for conv in level:
          x = act(conv(x))
        skips.append(x)
      x = self.dropout(x)
      for up, level, skip in zip(self.up, self.dec, reversed(skips[:-1])):
        x = torch.cat([skip, up(x)], dim=1)
        for conv in level:
          x = act(conv(x))
      if self.up:
        x = self.dropout(x)
      return self.logits(x)


def count_params(module: Any) -> int:
  return sum(p.numel() for p in module.parameters())


class Trainer:
  """Mondal's segmenter, Adam and one supervised step."""

  def __init__(self, in_channels: int = 2, num_classes: int = 4,
               seed: int = 0, class_weights=CLASS_WEIGHTS,
               ce_normalize: str = 'voxels',
               ignore_label: int = IGNORE_LABEL,
               adam: dict[str, Any] | None = None, **net_kwargs):
    require_torch()
    torch.manual_seed(seed)
    self.net = SegDiscriminator(in_channels, num_classes, **net_kwargs)
    self.net.train()
    adam = adam or dict(lr=1e-4, betas=(0.5, 0.999), eps=1e-8)
    self.opt = torch.optim.Adam(self.net.parameters(), **adam)
    self.weights = (torch.tensor(tuple(class_weights), dtype=torch.float32)
                    if class_weights else None)
    self.ce_normalize = ce_normalize
    self.ignore_label = ignore_label

  @classmethod
  def from_config(cls, config) -> 'Trainer':
    """The network, loss and optimiser of an mrseg configs/tissue_base.py."""
    d, o = config.model.discriminator, config.optim
    return cls(
        in_channels=len([m for m in str(config.data.modalities).split(',')
                         if m.strip()]),
        num_classes=config.model.num_classes, seed=config.seed,
        class_weights=tuple(config.loss.class_weights) or None,
        ce_normalize=config.loss.ce_normalize,
        ignore_label=config.loss.ignore_label,
        adam=dict(lr=o.d_learning_rate, betas=(o.b1, o.b2), eps=o.eps),
        features=tuple(d.features), convs_per_level=d.convs_per_level,
        kernel_size=d.kernel_size, up_kernel=d.up_kernel,
        out_kernel=d.out_kernel, pool=d.pool,
        negative_slope=d.negative_slope, weight_norm=d.weight_norm,
        dropout_rate=d.dropout_rate)

  def step(self, images, labels) -> float:
    """One Adam step on [B, C, X, Y, Z] images and [B, X, Y, Z] labels."""
    self.opt.zero_grad(set_to_none=True)
    logits = self.net(images)
    if self.ce_normalize == 'weights':  # a weighted mean
      loss = F.cross_entropy(logits, labels, weight=self.weights,
                             ignore_index=self.ignore_label)
    else:  # mrseg's 'voxels': the sum of weighted CE / valid voxels
      ce = F.cross_entropy(logits, labels, weight=self.weights,
                           ignore_index=self.ignore_label, reduction='sum')
      loss = ce / (labels != self.ignore_label).sum().clamp(min=1)
    loss.backward()
    self.opt.step()
    return loss.item()


def synthetic_batch(batch: int, patch: int, channels: int = 2,
                    num_classes: int = 4, seed: int = 1):
  """Images uniform in [-1, 1] and random labels, channels first."""
  g = torch.Generator().manual_seed(seed)
  images = torch.rand((batch, channels) + (patch,) * 3, generator=g) * 2 - 1
  labels = torch.randint(0, num_classes, (batch,) + (patch,) * 3, generator=g)
  return images, labels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--patch', type=int, default=32)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=1)
  args = parser.parse_args()
  require_torch()
  torch.set_num_threads(num_cores())
  trainer = Trainer()
  images, labels = synthetic_batch(args.batch, args.patch)
  for _ in range(args.warmup):
    trainer.step(images, labels)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    trainer.step(images, labels)
    times.append(time.perf_counter() - start)
  t = statistics.median(times)
  print(json.dumps({
      'bench': 'mrigan_train_step', 'impl': 'torch', 'kind': 'supervised',
      'batch': args.batch, 'patch': args.patch,
      'examples_per_s': args.batch / t, 'step_time_ms': t * 1e3,
      'threads': torch.get_num_threads(),
      'd_params': count_params(trainer.net)}))


if __name__ == '__main__':
  main()
