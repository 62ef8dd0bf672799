"""Paper 2's model kinds as data: what each `config.model.kind` trains.

Every kind trains Mondal et al.'s 3D UNet segmenter on the labelled loss;
a `KindSpec` says what a kind adds to it, and the step, the checks and the
data pipeline ask the spec, never the kind's name. A new kind is one more
entry of `KINDS` (and its loss weights in configs/tissue_base.py's
KIND_DEFAULTS).

Generators (`KindSpec.generator`, a key of `GENERATORS`), built by
`mrigan_step.build_generator`:

* 'noise': Mondal et al.'s NoiseGenerator, fed uniform noise z only;
  settings under `config.model.noise_generator`.
* 'mrigan': paper 2's generator, fed z, the MRI of unlabelled patch j and
  the tissue map of labelled patch j // r (mrigan_step's module docstring),
  as `config.model.generator`'s use_* switches ask.

Nothing here imports JAX, TensorFlow or the models.
"""
import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
  """A generator a kind may train.

  Attributes:
    settings: the config.model subtree that holds its settings.
    conditioned: fed, besides noise z, the MRI of unlabelled patch j and the
      tissue map of labelled patch j // r (as its settings' use_* switches
      ask); so config.unlabelled_batch_size must be a multiple of
      config.batch_size, and loss.transfer_weight may label generated
      patches with those maps. Otherwise fed z alone.
  """
  settings: str
  conditioned: bool


# Built by mrigan_step.build_generator (same keys).
GENERATORS = {
    'noise': GeneratorSpec(settings='noise_generator', conditioned=False),
    'mrigan': GeneratorSpec(settings='generator', conditioned=True),
}


@dataclasses.dataclass(frozen=True)
class KindSpec:
  """What one model.kind trains besides the labelled segmenter.

  Attributes:
    generator: None (no generator, no adversarial terms: a supervised
      segmenter) or a key of GENERATORS.
    boundary_loss: G's boundary loss applies (when its settings'
      use_boundary is on); its targets are the tissue maps, so it needs a
      conditioned generator.
  """
  generator: str | None
  boundary_loss: bool = False

  def __post_init__(self):
    if self.generator is not None and self.generator not in GENERATORS:
      raise ValueError(f'Unknown generator {self.generator!r}; choose one '
                       f'of {tuple(GENERATORS)} or None.')
    if self.boundary_loss and not self.conditioned:
      raise ValueError('boundary_loss needs a conditioned generator (its '
                       'targets are the tissue maps).')

  @property
  def adversarial(self) -> bool:
    """D's unlabelled and fake terms and G's update; the step reads
    config.unlabelled_batch_size unlabelled patches."""
    return self.generator is not None

  @property
  def conditioned(self) -> bool:
    """G is fed unlabelled MRI and labelled tissue maps (GeneratorSpec)."""
    return self.adversarial and GENERATORS[self.generator].conditioned

  def generator_settings(self, config: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
    """config.model.<the generator's settings> (needs a generator)."""
    return config.model[GENERATORS[self.generator].settings]


KINDS = {
    # Mondal et al.'s 3D UNet with the class-weighted labelled loss alone.
    'supervised': KindSpec(generator=None),
    # Mondal et al. 2018 ("Standard-GAN" in paper 2): G from noise.
    'fewshot_gan': KindSpec(generator='noise'),
    # Paper 2: G from an unlabelled MRI and a labelled tissue map, with the
    # boundary network's loss.
    'mrigan': KindSpec(generator='mrigan', boundary_loss=True),
}


def lookup(kind: str) -> KindSpec:
  """The spec of a model.kind.

  Raises:
    ValueError: naming model.kind and the kinds there are.
  """
  if kind not in KINDS:
    raise ValueError(f'Unsupported model.kind {kind!r}; choose one of '
                     f'{tuple(KINDS)}.')
  return KINDS[kind]


def spec(config: ml_collections.ConfigDict) -> KindSpec:
  """The spec of config.model.kind (ValueError for an unknown kind)."""
  return lookup(config.model.kind)


def kinds_with(attribute: str) -> tuple[str, ...]:
  """The kinds whose spec has `attribute` true, for error messages."""
  return tuple(k for k, s in KINDS.items() if getattr(s, attribute))
