"""Fixtures of the engine tests."""
from pathlib import Path

import pytest

from tests.helpers import write_dataset


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    """The tiny training set of the trainer tests, one per module: 6 train images (3 batches of 2 per epoch, so
    train_batch0..2 are drawn), 2 val images, 3 classes, 64 px. Modules that need another set define their own."""
    return write_dataset(tmp_path_factory.mktemp('tiny'), n_train=6, n_val=2, nc=3, imgsz=64)
