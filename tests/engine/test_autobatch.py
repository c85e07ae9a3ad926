"""AutoBatch: the choice on hand-computed memory profiles (the CUDA measurement cannot run here), the CPU fallback
through train.py, and the option checks."""
import pytest
import torch

import train
from tests.helpers import write_dataset
from utils.engine import autobatch as ab
from utils.engine.options import TrainError


def test_pick_on_a_linear_profile():
    """1 GiB fixed + 0.5 GiB per image, 10 GiB free, 80 % -> (8 - 1) / 0.5 = 14 images."""
    mem = [1 + 0.5 * b for b in ab.PROFILE_BATCH_SIZES]
    assert ab.pick_batch_size(ab.PROFILE_BATCH_SIZES, mem, free_gib=10.0) == (14, '')
    assert ab.pick_batch_size(ab.PROFILE_BATCH_SIZES, mem, free_gib=10.0, fraction=0.6) == (10, '')  # (6-1)/0.5


def test_pick_cut_back_below_the_first_out_of_memory_size():
    """The fit says 14, but batch 8 already ran out of memory: use 4, the last size that fitted."""
    mem = [1.5, 2.0, 3.0, None, None]
    assert ab.pick_batch_size(ab.PROFILE_BATCH_SIZES, mem, free_gib=10.0) == (4, '')


@pytest.mark.parametrize('mem, free, why', [
    ([1.0, None, None, None, None], 10.0, 'too few batch sizes profiled (1)'),
    ([2.0, 2.0, 2.0, 2.0, 2.0], 10.0, 'memory does not grow with batch size'),
    ([1.0, 1.001, 1.002, 1.004, 1.008], 80.0, 'outside 1-1024'),
    ([5.0, 5.5, 6.5, 8.5, 12.5], 4.0, 'outside 1-1024'),  # not even one image fits in 80 % of what is free
])
def test_pick_falls_back_to_default(mem, free, why):
    b, reason = ab.pick_batch_size(ab.PROFILE_BATCH_SIZES, mem, free_gib=free, default=16)
    assert b == 16 and why in reason


def test_cpu_model_keeps_default(log_text):
    m = torch.nn.Conv2d(3, 4, 3)
    assert ab.autobatch(m, 64, batch_size=16, profile=lambda *a, **k: pytest.fail('must not profile on CPU')) == 16
    assert 'CUDA not detected, using default CPU batch-size 16' in log_text.getvalue()


def test_train_with_minus_one_on_cpu_uses_16(tmp_path, log_text):
    data = write_dataset(tmp_path / 'ds', n_train=2, n_val=1, nc=2, imgsz=64)
    run = train.run(data=str(data), cfg='models/yolov5n.yaml', epochs=1, imgsz=64, batch_size=-1, workers=0,
                    device='cpu', project=str(tmp_path), name='exp', noplots=True)
    assert (run / 'weights/last.pt').is_file()
    assert 'AutoBatch: CUDA not detected, using default CPU batch-size 16' in log_text.getvalue()


@pytest.mark.parametrize('bad', [0, -2])
def test_other_non_positive_batch_sizes_are_one_line_errors(bad, tmp_path):
    with pytest.raises(TrainError, match=rf'--batch-size must be positive, or -1 for AutoBatch; got {bad}'):
        train.run(batch_size=bad, epochs=1, project=str(tmp_path))
