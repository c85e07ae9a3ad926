"""Shared test fixtures. Tests make every file they use; nothing is downloaded."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault('OMP_NUM_THREADS', '2')


@pytest.fixture(scope='session')
def root() -> Path:
    """The repository root."""
    return ROOT
