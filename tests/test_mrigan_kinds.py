"""Paper 2's model kinds as data: each spec says what the trainer does."""
import jax
import jax.numpy as jnp
import pytest

from configs import tissue_base
from mrseg import overrides as overrides_lib
from mrseg.data import tissue as tissue_lib
from mrseg.models import mrigan
from mrseg.models import mrigan_generator
from mrseg.train import mrigan_kinds
from mrseg.train import mrigan_options
from mrseg.train import mrigan_step

GENERATOR_CLASSES = {'noise': mrigan.NoiseGenerator,
                     'mrigan': mrigan_generator.MRIGANGenerator}


def _config(kind, **overrides):
  config = tissue_base.get_config(f'{kind},test')
  return overrides_lib.apply(config, overrides)


def _step_metrics(config):
  """The names of the step's metrics, from tracing it (nothing compiled)."""
  p, c = config.data.patch_size, len(tissue_lib.modalities(config))
  n_l, n_u = config.batch_size, config.unlabelled_batch_size
  batch = {'labelled': {
      'image': jax.ShapeDtypeStruct((n_l, p, p, p, c), jnp.float32),
      'label': jax.ShapeDtypeStruct((n_l, p, p, p), jnp.uint8)}}
  if mrigan_kinds.spec(config).adversarial:
    batch['unlabelled'] = {
        'image': jax.ShapeDtypeStruct((n_u, p, p, p, c), jnp.float32)}
  step = mrigan_step.make_train_step(
      config, (1.0,) * config.model.num_classes)
  _, metrics = jax.eval_shape(step, mrigan_step.abstract_state(config),
                              batch, jax.random.key(0))
  return set(metrics)


def test_the_configs_offer_exactly_the_registered_kinds():
  assert tissue_base.KINDS == tuple(mrigan_kinds.KINDS)
  assert set(tissue_base.KIND_DEFAULTS) == set(mrigan_kinds.KINDS)
  assert mrigan_kinds.KINDS['supervised'].generator is None
  assert not mrigan_kinds.KINDS['fewshot_gan'].conditioned
  assert mrigan_kinds.KINDS['mrigan'].boundary_loss


@pytest.mark.parametrize('kind', list(mrigan_kinds.KINDS))
def test_each_kinds_spec_matches_what_the_trainer_builds(kind):
  config = _config(kind)
  spec = mrigan_kinds.lookup(kind)
  generator = mrigan_step.build_generator(config)
  state = mrigan_step.abstract_state(config)
  assert mrigan_options.is_gan(config) == spec.adversarial
  if spec.generator is None:
    assert generator is None and not state.gen.params
  else:
    assert isinstance(generator, GENERATOR_CLASSES[spec.generator])
    assert state.gen.params
  metrics = _step_metrics(config)
  fake_terms = {'loss_unlabelled', 'loss_fake', 'd_real', 'd_fake', 'g_loss'}
  assert fake_terms <= metrics if spec.adversarial else not (
      fake_terms & metrics)
  assert ('boundary_loss' in metrics) == (
      spec.boundary_loss and config.model.generator.use_boundary)
  if spec.adversarial:
    p, c = config.data.patch_size, len(tissue_lib.modalities(config))
    n = config.unlabelled_batch_size
    inputs = mrigan_step.generator_inputs(
        config, jnp.zeros((config.batch_size, p, p, p), jnp.int32),
        jnp.zeros((n, p, p, p, c)), jax.random.split(jax.random.key(0), n))
    assert ('tissues' in inputs) == spec.conditioned
    dim = spec.generator_settings(config).noise_dim  # 0 in paper 2's
    assert (inputs['z'].shape == (n, dim)) if dim else inputs['z'] is None


def test_only_conditioned_kinds_pair_batches():
  for kind, spec in mrigan_kinds.KINDS.items():
    config = _config(kind, unlabelled_batch_size=6)  # batch_size 4
    if spec.conditioned:
      with pytest.raises(ValueError, match='multiple of config.batch_size'):
        mrigan_options.check_config(config)
    else:
      mrigan_options.check_config(config)


def test_an_unknown_kind_fails_naming_model_kind():
  with pytest.raises(ValueError, match=r"model\.kind 'gan'.*'supervised', "
                     r"'fewshot_gan', 'mrigan'"):
    mrigan_kinds.lookup('gan')
  config = _config('mrigan', **{'model.kind': 'gan'})
  for fn in (mrigan_options.check_config, mrigan_step.build_generator,
             mrigan_options.is_gan):
    with pytest.raises(ValueError, match='Unsupported model.kind'):
      fn(config)


def test_a_new_kind_is_one_registry_entry(monkeypatch):
  # A fewshot GAN whose generator is paper 2's, fed noise, MRI and maps,
  # without the boundary loss: no code changes, one entry.
  monkeypatch.setitem(mrigan_kinds.KINDS, 'conditioned_gan',
                      mrigan_kinds.KindSpec(generator='mrigan'))
  config = _config('mrigan', **{'model.kind': 'conditioned_gan'})
  mrigan_options.check_config(config)
  assert isinstance(mrigan_step.build_generator(config),
                    mrigan_generator.MRIGANGenerator)
  metrics = _step_metrics(config)
  assert 'g_loss' in metrics and 'boundary_loss' not in metrics


def test_inconsistent_specs_fail():
  with pytest.raises(ValueError, match='Unknown generator'):
    mrigan_kinds.KindSpec(generator='diffusion')
  with pytest.raises(ValueError, match='conditioned generator'):
    mrigan_kinds.KindSpec(generator='noise', boundary_loss=True)
  with pytest.raises(ValueError, match='conditioned generator'):
    mrigan_kinds.KindSpec(generator=None, boundary_loss=True)
