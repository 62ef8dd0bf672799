"""Config variants and dotted overrides, parsed one way everywhere.

A config file takes variants after a colon, comma-separated and combinable:
`--config=configs/unet.py:quick` or `configs/synth2seg.py:quick,test`;
`variants` splits such an argument and refuses a name the file does not
define. A dotted override (`model.conv=xla`) sets one nested key of a
config: `set_dotted` and `apply` do it for configs (a family's defaults),
sweeps, benchmarks (`--set KEY=VALUE`, strings parsed to the key's type)
and tests, and refuse a key the config does not have, as the locked config
of `--config.KEY=VALUE` does.
"""
import ast
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


def variants(arg: str, allowed: Sequence[str], config_file: str) -> list[str]:
  """The variant names in `arg` ('quick,test'), in order.

  Raises:
    ValueError: for a name not in `allowed`, naming the config file.
  """
  names = [v.strip() for v in (arg or '').split(',') if v.strip()]
  unknown = [v for v in names if v not in allowed]
  if unknown:
    raise ValueError(f'Unknown variant {unknown[0]!r} of {config_file}; '
                     f'choose from {tuple(allowed)} (comma-separated).')
  return names


def parse_value(text: str, current: Any) -> Any:
  """`text` (a command-line string) as the type of the config's `current`."""
  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise ValueError(f'Expected a boolean, got {text!r}.')
  if isinstance(current, (tuple, list)):
    return type(current)(ast.literal_eval(text))
  return type(current)(text)


def set_dotted(config: ml_collections.ConfigDict, key: str, value: Any, *,
               parse: bool = False) -> None:
  """config.<key> = value for a dotted `key` ('model.conv'), in place.

  Args:
    config: the config to change.
    key: dotted path of an existing key.
    value: the new value; with `parse`, a string converted to the current
      value's type (`parse_value`).
    parse: convert `value` from a string.

  Raises:
    KeyError: naming the key, if the config has no such key.
  """
  node = config
  *parents, leaf = key.split('.')
  for p in parents:
    if p not in node:
      raise KeyError(f'Override {key!r}: the config has no {p!r}.')
    node = node[p]
  if leaf not in node:
    raise KeyError(f'Override {key!r}: the config has no {leaf!r}.')
  node[leaf] = parse_value(value, node[leaf]) if parse else value


def apply(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *,
          parse: bool = False) -> ml_collections.ConfigDict:
  """Sets every dotted key of `overrides` (`set_dotted`); returns `config`."""
  for key, value in overrides.items():
    set_dotted(config, key, value, parse=parse)
  return config
