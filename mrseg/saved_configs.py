"""Configs that runs saved, compared with today's: keys added since.

Every run saves its whole config (workdir/config.json), and a resumed run,
or a pipeline stage reused by a later pipeline, must have been trained with
the config asked for now (`workdir.start_run`, synth2seg's stage check).
A key added to the configs after a run was saved is missing from its
config.json. Counting every such key as a difference made every new option
refuse every older unfinished workdir, even at the value that runs the code
as it ran before the key existed. `ADDED_KEYS` holds that value per added
key: a key present on one side only is a difference unless its value there
is the one listed (so an old run resumes at today's defaults where they
reproduce it, and is still refused where they do not, e.g. the conditional
GAN's layout.tumour_classes, whose default went from 1 to 3).

Keys match by dotted suffix at a component boundary, so 'model.input_norm'
also covers synth2seg's 'unet.model.input_norm' and 'reference...'; the
longest listed suffix wins. A key that only matters under another setting
(e.g. `mismatch_shift` without `mismatch_weight`) lists today's default:
any value reproduces the old run, and the default is what a user resumes
with.

When a config gains a key: give it the default that keeps earlier runs as
they were where that is reasonable, and list it here with the value that
does (tests/test_saved_configs.py checks that every listed key exists).
"""
import json
from typing import Any

# Dotted key (suffix) -> the value that reproduces runs saved before it
# existed. Grouped by the config that gained it, with the commit.
ADDED_KEYS: dict[str, Any] = {
    # configs/dcgan.py: small-data options (6d614ae, dad5125), conv (518d62d).
    'diffaug': '',
    'ema_decay': 0.0,
    'r1_gamma': 0.0,
    'mismatch_weight': 0.0,
    'mismatch_shift': (0.15, 0.4),
    'mask_smoothing': 0.05,
    'model.mask_output': 'tanh',
    'model.discriminator.spectral_norm': False,
    'model.discriminator.conv': 'xla',
    # configs/unet.py: on-device augmentation (9db9158), input
    # normalisation (dad5125).
    'augment.on_device': False,
    'model.input_norm': 'none',
    # configs/cgan.py: host-image context (9cd2b01), tumour classes
    # (05046cc: default 1 then, 3 since), tumour L1 weight (b54ea8d).
    'context': 'none',
    'hole_dilation': 3,
    'layout.tumour_classes': 1,
    'rec_tumour_weight': 1.0,
    # configs/synth2seg.py: shared stage folders (046aef5), best-of-K
    # selection (0d9badb), the FID network (22b3710).
    'gan_dir': '',
    'reference_dir': '',
    'keep_best_of': 1,
    'fidelity_unet_dir': '',
    # configs/tissue_base.py (3D): class balance (84d1e05), split order
    # (1dd2a18), loss readings and extensions (issue 12), patch
    # augmentation (a5c9274), the generator's conv.
    'data.class_balanced': False,
    'data.split_order': '',
    'data.unlabelled_in_brain': 'background',
    'eval.restrict_to_brain': False,
    'loss.labelled_loss': 'ce',
    'loss.dice_weight': 1.0,
    'loss.dice_include_background': False,
    'loss.generator_objective': 'feature_matching',
    'loss.unsupervised_warmup_steps': 0,
    'loss.transfer_weight': 0.0,
    'loss.transfer_start_step': 0,
    'augment.flip_axes': (),
    'augment.gamma': 0.0,
    'augment.intensity_scale': 0.0,
    'augment.intensity_shift': 0.0,
    'model.generator.conv': 'xla',
}

_MISSING = object()


def legacy_value(key: str) -> Any:
  """The value that reproduces runs saved before dotted `key` existed.

  Returns a JSON-normalised value (tuples as lists, as config.json holds
  them), or `_MISSING` if `key` is not listed.
  """
  matches = [s for s in ADDED_KEYS if key == s or key.endswith('.' + s)]
  if not matches:
    return _MISSING
  return json.loads(json.dumps(ADDED_KEYS[max(matches, key=len)]))


def get(config: Any, key: str) -> Any:
  """config[key] (dotted) or, in a run saved before it existed, its
  legacy value; KeyError for a missing key that is not listed."""
  value = config
  try:
    for part in key.split('.'):
      value = value[part]
    return value
  except (KeyError, AttributeError, TypeError):
    legacy = legacy_value(key)
    if legacy is _MISSING:
      raise KeyError(f'config has no {key!r}') from None
    return legacy


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """A nested config dict (as JSON) as {dotted key: leaf value}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def changes(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  """Dotted keys whose values differ between two config dicts (as JSON).

  A key on one side only differs unless its value there is its legacy
  value (ADDED_KEYS).
  """
  a, b = flatten(saved), flatten(wanted)
  out = []
  for key in sorted(set(a) | set(b)):
    if key in a and key in b:
      if a[key] != b[key]:
        out.append(key)
    elif (a[key] if key in a else b[key]) != legacy_value(key):
      out.append(key)
  return out
