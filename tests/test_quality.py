"""Checks of synthetic pairs: empty masks, alignment, memorisation, gates."""
import ml_collections
import numpy as np
import pytest

from mrseg import quality


def _pairs():
  rng = np.random.default_rng(0)
  images = rng.random((6, 16, 16, 1)).astype(np.float32)
  masks = np.zeros((6, 16, 16, 1), np.uint8)
  for i in range(5):  # the last mask is empty
    masks[i, 4 + i:8 + i, 3:9] = 1
  return images, masks


def test_empty_masks_and_pooled_dice():
  _, masks = _pairs()
  assert quality.empty_masks(masks) == 1
  assert quality.pooled_dice(masks, masks) == 1.0
  assert quality.pooled_dice(np.zeros(3), np.zeros(3)) == 1.0
  a = np.array([1, 1, 0, 0])
  b = np.array([1, 0, 1, 0])
  assert quality.pooled_dice(a, b) == pytest.approx(0.5)


def test_alignment_scores_the_masks_against_a_segmenter():
  images, masks = _pairs()
  perfect = quality.alignment(lambda x: masks[..., 0], images, masks)
  assert perfect == {'alignment_dice': 1.0, 'alignment_case_dice': 1.0,
                     'alignment_detected': 1.0}
  # A segmenter that sees the tumours elsewhere: masks do not sit on them.
  shifted = np.roll(masks[..., 0], 8, axis=2)
  off = quality.alignment(lambda x: shifted, images, masks)
  assert off['alignment_dice'] == 0.0 and off['alignment_detected'] == 0.0


def test_memorisation_tells_copies_from_new_images():
  rng = np.random.default_rng(1)
  real = rng.random((10, 8, 8, 1))
  copies = quality.memorisation(real, real[:5] + 1e-4)
  assert copies['memorisation_ratio'] < 0.01
  assert copies['nn_closer_than_real'] == 1.0
  new = quality.memorisation(real, rng.random((5, 8, 8, 1)))
  assert 0.7 < new['memorisation_ratio'] < 1.3
  assert new['nn_distance_real'] == pytest.approx(copies['nn_distance_real'])


def test_gates_name_the_numbers():
  gates = ml_collections.ConfigDict(dict(max_empty_fraction=0.2,
                                         min_alignment_dice=0.3, enforce=True))
  assert not quality.check_gates(
      {'empty_fraction': 0.1, 'alignment_dice': 0.5}, gates)
  failed = quality.check_gates(
      {'empty_fraction': 1.0, 'alignment_dice': 0.05}, gates)
  assert len(failed) == 2
  assert '100% of the synthetic masks are empty' in failed[0]
  assert 'Dice 0.050' in failed[1]


def test_pair_scores_rank_aligned_pairs_first_and_empty_masks_last():
  masks = np.zeros((4, 8, 8, 1), np.uint8)
  masks[0, 2:6, 2:6] = 1   # found exactly
  masks[1, 0:4, 0:4] = 1   # found in part
  masks[3, 4:8, 4:8] = 1   # missed
  labels = np.zeros((4, 8, 8), np.int32)
  labels[0, 2:6, 2:6] = 1
  labels[1, 0:2, 0:4] = 1
  # Pair 2 has an empty mask and an empty prediction: it teaches no tumour.
  scores = quality.pair_scores(labels, masks)
  np.testing.assert_allclose(scores, [1.0, 2 * 8 / 24, 0.0, 0.0])
  np.testing.assert_array_equal(quality.best_pairs(scores, 2), [0, 1])
  # Ties go to the first drawn; the kept indices come back in drawn order.
  np.testing.assert_array_equal(quality.best_pairs([0.5, 0.9, 0.5], 2), [0, 1])
  with pytest.raises(ValueError, match='Cannot keep 5 of 4'):
    quality.best_pairs(scores, 5)
  assert quality.agreement(labels, masks) == quality.alignment(
      lambda images: labels, np.zeros((4, 8, 8, 1)), masks)


def test_the_gate_judges_every_pair_drawn_not_the_kept_ones():
  gates = ml_collections.ConfigDict(dict(max_empty_fraction=0.2,
                                         min_alignment_dice=0.25))
  kept_only = {'empty_fraction': 0.0, 'alignment_dice': 0.9}
  assert not quality.check_gates(kept_only, gates)
  failed = quality.check_gates({**kept_only, 'drawn_alignment_dice': 0.1},
                               gates)
  assert len(failed) == 1 and 'Dice 0.100' in failed[0]


def test_checkpoint_ties_go_to_fewer_empty_masks_then_the_later_step():
  def row(step, dice, empty):
    return {'step': step, 'alignment_dice': dice, 'empty_fraction': empty}
  assert quality.best_checkpoint(
      [row(500, 0.3, 0.0), row(1000, 0.6, 0.1), row(1500, 0.5, 0.0)]) == 1000
  # The paper's joint GAN at seed 0: alignment 0 at every checkpoint.
  assert quality.best_checkpoint(
      [row(500, 0.0, 1.0), row(1000, 0.0, 0.73), row(1500, 0.0, 1.0)]) == 1000
  assert quality.best_checkpoint(
      [row(500, 0.0, 1.0), row(1000, 0.0, 1.0)]) == 1000
  with pytest.raises(ValueError, match='No GAN checkpoint'):
    quality.best_checkpoint([])
