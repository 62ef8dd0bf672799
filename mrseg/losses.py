"""Losses of both papers, written on logits for numerical stability.

GAN losses take discriminator logits l (D(x) = sigmoid(l)); with
log sigmoid(l) = -softplus(-l) and log(1 - sigmoid(l)) = -softplus(l) they
never take the log of a saturated probability.
"""
import jax
import jax.numpy as jnp

GAN_LOSSES = ('minimax', 'non_saturating')


def _check_gan_loss(kind: str) -> None:
  if kind not in GAN_LOSSES:
    raise ValueError(f'Unsupported GAN loss {kind!r}; choose one of {GAN_LOSSES}.')


def discriminator_loss(kind: str, real_logits: jax.Array,
                       fake_logits: jax.Array) -> jax.Array:
  """-E[log D(x)] - E[log(1 - D(G(z)))]: eq. (1) of paper 1, maximised by D.

  Both GAN forms share this discriminator loss; they differ in the generator's.
  """
  _check_gan_loss(kind)
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(
      jax.nn.softplus(fake_logits))


def generator_loss(kind: str, fake_logits: jax.Array) -> jax.Array:
  """The generator's loss on D's logits for generated samples.

  Args:
    kind: 'minimax' minimises E[log(1 - D(G(z)))] as eq. (1) reads, whose
      gradient vanishes while D rejects the fakes confidently;
      'non_saturating' minimises -E[log D(G(z))] (Goodfellow et al. 2014,
      Sec. 3), what the paper's Keras code does by labelling fakes as real.
    fake_logits: D's logits for G(z).

  Returns:
    A scalar loss.
  """
  _check_gan_loss(kind)
  if kind == 'minimax':
    return -jnp.mean(jax.nn.softplus(fake_logits))
  return jnp.mean(jax.nn.softplus(-fake_logits))
