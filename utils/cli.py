"""How every entry point ends on bad input: one line naming the file and the problem, never a traceback.

train.py, val.py, detect.py, export.py and hubconf.py wrap their work in ``one_line_errors``, so a hostile or broken
weights file, YAML, dataset or image source is reported the same way everywhere. Errors outside this list are bugs
and keep their traceback. This module sits on the floor just below the entry points: it names error types from
every floor below (the mechanism itself, ``utils.core.errors.exit_on``, is foundation).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from utils.core.errors import exit_on


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "bad input" (each carries a one-line message naming the file). Imported when
    called, so that ``train.py --help`` stays free of torch."""
    from models.config import ModelConfigError
    from models.yolo import InputSizeError
    from utils.checkpoint.format import CheckpointError
    from utils.core.safety import UnsafeFileError
    from utils.core.torch_utils import DeviceError
    from utils.data.config import ConfigError
    from utils.data.sources import SourceError
    from utils.inference.backend import BackendError

    return (BackendError, CheckpointError, ConfigError, DeviceError, InputSizeError, ModelConfigError, SourceError,
            UnsafeFileError, FileNotFoundError)


@contextmanager
def one_line_errors(prog: str, own: tuple[type[BaseException], ...] = (), show_type: bool = False) -> Iterator[None]:
    """Turn expected errors (and the entry point's ``own``) into ``sys.exit('<prog>: <message>')``.

    ``show_type`` prefixes the class name of the expected errors (train.py's format); the entry point's own errors
    are reported by their message alone."""
    with exit_on(prog, lambda: (*expected_errors(), *own), typed=expected_errors if show_type else ()):
        yield
