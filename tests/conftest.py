"""Shared test fixtures. Tests make every file they use; nothing is downloaded."""
import io
import logging
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


@pytest.fixture
def log_lines():
    """Messages sent to the project logger during the test (it does not propagate to pytest's caplog)."""
    from utils.core.logging import LOGGER
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    LOGGER.addHandler(handler)
    yield lines
    LOGGER.removeHandler(handler)


@pytest.fixture
def log_text():
    """Everything the project logger prints during the test, as a StringIO (``log_text.getvalue()``)."""
    from utils.core.logging import LOGGER
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    LOGGER.addHandler(handler)
    yield stream
    LOGGER.removeHandler(handler)
