"""What the conditional GAN's generator is conditioned on.

Layouts: one-hot label maps (`layout_spec`: the host's tissue classes plus
the tumour's), composed from a batch's classes and tumour (`compose_layout`),
read with the real training split (`training_arrays`) or drawn anew from
real masks for synthesis (`synthesis_layouts`). With context='host_image'
the generator also sees the host image around a hole (`hole`, `g_inputs`,
`host_context`) and its pixels are pasted into the host (`paste`).
"""
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrseg.data import layouts as layouts_lib


def layout_spec(config: ml_collections.ConfigDict) -> layouts_lib.LayoutSpec:
  return layouts_lib.LayoutSpec.from_config(config.layout)


def compose_layout(classes: jax.Array, tumour: jax.Array,
                   spec: layouts_lib.LayoutSpec) -> jax.Array:
  """One-hot layout [B, H, W, L] from classes [B, H, W, 1] and the tumour's
  classes [B, H, W, 1] (0 outside it, 1..T inside: label K + t)."""
  labels = jnp.where(tumour > 0, spec.num_classes + tumour, classes)
  return jax.nn.one_hot(labels[..., 0].astype(jnp.int32), spec.num_labels)


def g_input_channels(config: ml_collections.ConfigDict) -> int:
  """The layout's one-hot labels, plus the host image and its hole."""
  extra = config.data.channels + 1 if config.context == 'host_image' else 0
  return layout_spec(config).num_labels + extra


def hole(masks: jax.Array, dilation: int) -> jax.Array:
  """float [B, H, W, 1]: where G paints: the masks dilated by a square of
  `dilation` pixels (the tumour's rim and oedema with it)."""
  k = 2 * dilation + 1
  return jax.lax.reduce_window(masks.astype(jnp.float32), 0.0, jax.lax.max,
                               (1, k, k, 1), (1, 1, 1, 1), 'SAME')


def g_inputs(config: ml_collections.ConfigDict, layout: jax.Array,
             host: jax.Array | None, where: jax.Array | None) -> jax.Array:
  """G's input: the one-hot layout, with context='host_image' also the
  host image (model range) outside the hole and the hole itself."""
  if config.context != 'host_image':
    return layout
  return jnp.concatenate([layout, host * (1 - where), where], axis=-1)


def paste(config: ml_collections.ConfigDict, images: jax.Array,
          host: jax.Array | None, where: jax.Array | None) -> jax.Array:
  """context='host_image': G's pixels inside the hole, the host's outside."""
  if config.context != 'host_image':
    return images
  return where * images + (1 - where) * host


def host_context(config: ml_collections.ConfigDict,
                 arrays: dict[str, np.ndarray], masks: np.ndarray,
                 records: list[dict[str, Any]]
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """(host images, holes) of synthesis layouts: the hole covers the new
  tumour and the host's own (erased, painted over as healthy tissue)."""
  if config.context != 'host_image':
    return None, None
  index = np.array([r['host_index'] for r in records])
  both = np.maximum(np.asarray(masks, np.float32),
                    np.asarray(arrays['mask'], np.float32)[index])
  return (np.asarray(arrays['image'], np.float32)[index],
          np.asarray(hole(both, config.hole_dilation)))


def training_arrays(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The real training split with its host layouts: image, classes, tumour
  (its classes), mask, id."""
  from mrseg.data import datasets  # pylint: disable=g-import-not-at-top
  real = datasets.load_2d_split(config.data, 'train')
  spec = layout_spec(config)
  classes = np.stack([layouts_lib.host_layout(i, mk, spec)[0]
                      for i, mk in zip(real['image'], real['mask'])])
  tumour = np.stack([layouts_lib.tumour_labels(i, mk, spec)
                     for i, mk in zip(real['image'], real['mask'])])
  return {'image': real['image'], 'classes': classes[..., None],
          'tumour': tumour[..., None], 'mask': real['mask'], 'id': real['id']}


def synthesis_layouts(config: ml_collections.ConfigDict,
                      arrays: dict[str, np.ndarray], num: int, seed: int):
  """(layouts, masks, provenance) of `num` new pairs from real masks."""
  return layouts_lib.synthesis_layouts(
      arrays['image'], arrays['mask'], arrays['id'], num, seed,
      layout_spec(config), layouts_lib.MaskTransform.from_config(config.masks))
