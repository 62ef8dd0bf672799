"""The 2D training stream: epochs, resume, per-process shards, scaling."""
import numpy as np
import pytest

from mrseg.data import pipeline


def _arrays(n=10):
  return {'image': np.linspace(0, 1, n * 4, dtype=np.float32).reshape(n, 2, 2, 1),
          'index': np.arange(n, dtype=np.int64)}


def _indices(num_steps, batch=5, **kwargs):
  ds = pipeline.train_dataset(_arrays(), batch, seed=kwargs.pop('seed', 7), **kwargs)
  it = ds.as_numpy_iterator()
  return [next(it)['index'] for _ in range(num_steps)]


def test_every_epoch_is_a_permutation_and_epochs_differ():
  flat = np.concatenate(_indices(6, batch=5))  # 3 epochs of 10
  epochs = flat.reshape(3, 10)
  for epoch in epochs:
    assert sorted(epoch) == list(range(10))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(10))


def test_resume_reads_the_same_batches_without_replay():
  full = _indices(7, batch=4)
  resumed = _indices(4, batch=4, start_step=3)
  for a, b in zip(full[3:], resumed):
    np.testing.assert_array_equal(a, b)


def test_seed_changes_the_order():
  a = np.concatenate(_indices(2, seed=1))
  b = np.concatenate(_indices(2, seed=2))
  assert not np.array_equal(a, b)


def test_processes_partition_each_global_batch():
  whole = _indices(3, batch=6, process_index=0, process_count=1)
  shards = [_indices(3, batch=6, process_index=p, process_count=3)
            for p in range(3)]
  for step in range(3):
    np.testing.assert_array_equal(
        np.concatenate([s[step] for s in shards]), whole[step])
    assert len(shards[0][step]) == 2


def test_scaling_to_model_range_and_back():
  ds = pipeline.train_dataset(_arrays(), 10, seed=0,
                              preprocess=pipeline.scale_images)
  batch = next(ds.as_numpy_iterator())
  order = batch['index']
  expected = _arrays()['image'][order] * 2 - 1
  np.testing.assert_allclose(batch['image'], expected, atol=1e-6)
  np.testing.assert_allclose(pipeline.from_model_range(batch['image']),
                             _arrays()['image'][order], atol=1e-6)
  assert '_global_index' not in batch


@pytest.mark.parametrize('arrays, batch, match', [
    ({'image': np.zeros((0, 2, 2, 1))}, 2, 'empty'),
    ({'image': np.zeros((3, 2)), 'mask': np.zeros((2, 2))}, 1, 'differ in length'),
    ({'mask': np.zeros((3, 2))}, 1, "'image'"),
    ({'image': np.zeros((3, 2))}, 3, 'divisible'),
])
def test_bad_arrays_or_batch_sizes_fail_clearly(arrays, batch, match):
  with pytest.raises(ValueError, match=match):
    pipeline.train_dataset(arrays, batch, seed=0, process_count=2,
                           process_index=0)
