"""Tests of the one variant parser and dotted-override helper."""
import ml_collections
import pytest

from configs import synth2seg as synth2seg_config
from configs import tissue_base
from configs import unet as unet_config
from mrseg import overrides


def test_variants_split_and_refuse_unknown_names():
  assert overrides.variants('quick, test', ('quick', 'test'), 'x.py') == [
      'quick', 'test']
  assert overrides.variants('', ('quick',), 'x.py') == []
  with pytest.raises(ValueError, match="Unknown variant 'bogus' of x.py"):
    overrides.variants('quick,bogus', ('quick',), 'x.py')


def test_set_dotted_refuses_unknown_keys_and_parses_strings():
  config = ml_collections.ConfigDict({'a': {'n': 1, 'flag': True}})
  overrides.apply(config, {'a.n': 2})
  assert config.a.n == 2
  overrides.set_dotted(config, 'a.flag', 'no', parse=True)
  assert config.a.flag is False
  with pytest.raises(KeyError, match='a.m'):
    overrides.set_dotted(config, 'a.m', 1)
  with pytest.raises(KeyError, match='b.n'):
    overrides.set_dotted(config, 'b.n', 1)


def test_config_variants_combine():
  # unet variants used to exclude each other; synth2seg kept the first.
  quick, test = unet_config.get_config('quick'), unet_config.get_config('test')
  both = unet_config.get_config('quick,test')
  assert both.loss.name == quick.loss.name == 'dice_ce'  # from quick only
  assert both.data.image_size == test.data.image_size == 32  # test wins
  s2s = synth2seg_config.get_config('quick,test')
  assert s2s.unet.loss.name == 'dice_ce'
  assert s2s.data.image_size == synth2seg_config.get_config(
      'test').data.image_size
  real = synth2seg_config.get_config('quick,real')
  assert (real.data.name, real.data.test_ids, real.cgan.masks.placement) == (
      'brain_tumor_segmentation', '1001-1400', 'host')
  assert real.data.image_size == 64
  with pytest.raises(ValueError, match="Unknown variant 'fast'"):
    unet_config.get_config('fast')
  config = tissue_base.get_config('fewshot_gan,test')
  assert config.model.kind == 'fewshot_gan'
