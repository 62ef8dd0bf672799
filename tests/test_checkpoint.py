"""The best-by-validation checkpoint that the segmentation trainers share."""
import json
import math
import os
import re

import numpy as np
import pytest

from mrseg.train import checkpoint as checkpoint_lib
from mrseg.train import logs


def _state(step):
  return {'w': np.full((2,), step, np.float32)}


def _record(dice):
  return {'val_dice': dice, 'val_loss': 1.0 - dice}


def test_only_a_strictly_better_defined_dice_becomes_best(tmp_path):
  workdir = str(tmp_path)
  best = checkpoint_lib.BestCheckpoint(workdir, 'val_dice')
  best_json = os.path.join(workdir, 'best.json')
  assert not best.offer(1, _record(math.nan), _state(1))
  assert best.record['step'] is None and not os.path.exists(best_json)
  assert best.offer(2, _record(0.5), _state(2))
  assert not best.offer(3, _record(math.nan), _state(3))
  assert not best.offer(4, _record(0.5), _state(4))  # a tie keeps the first
  best.close()
  assert best.record == {'step': 2, 'val_dice': 0.5, 'val_loss': 0.5}
  with open(best_json) as f:
    assert json.load(f) == best.record
  state, step = checkpoint_lib.restore_best(workdir, _state(0))
  assert step == 2
  np.testing.assert_array_equal(state['w'], [2, 2])


def test_resume_forgets_best_checkpoints_it_will_redo(tmp_path):
  # Best saved at steps 2 and 6, then the run died before its regular
  # checkpoint of step 6: the resumed run (from step 4) redoes steps 5-6, so
  # the best record comes from the history up to step 4 and best/6 is
  # dropped.
  workdir = str(tmp_path)
  history = logs.JsonlWriter(os.path.join(workdir, 'history.jsonl'))
  best = checkpoint_lib.BestCheckpoint(workdir, 'val_dice')
  for step, dice in ((1, math.nan), (2, 0.5), (4, 0.4), (6, 0.9)):
    history.write_scalars(step, _record(dice))
    best.offer(step, _record(dice), _state(step))
  best.close()
  history.truncate_after(4)

  resumed = checkpoint_lib.BestCheckpoint(workdir, 'val_dice')
  resumed.resume(history.path, 4)
  assert resumed.record == {'step': 2, 'val_dice': 0.5, 'val_loss': 0.5}
  assert list(resumed.checkpointer.manager.all_steps()) == []
  # The redone step saves again; a resume from it keeps it.
  history.write_scalars(6, _record(0.9))
  assert resumed.offer(6, _record(0.9), _state(6))
  resumed.close()
  again = checkpoint_lib.BestCheckpoint(workdir, 'val_dice')
  again.resume(history.path, 6)
  assert again.record == {'step': 6, 'val_dice': 0.9,
                          'val_loss': pytest.approx(0.1)}
  assert list(again.checkpointer.manager.all_steps()) == [6]
  again.close()


def test_restore_best_without_a_best_checkpoint_names_the_folder(tmp_path):
  folder = os.path.join(str(tmp_path), 'best')
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f'No best checkpoint in {folder}:')):
    checkpoint_lib.restore_best(str(tmp_path), _state(0))
