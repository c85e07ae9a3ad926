"""How every entry point ends on bad input: one line naming the file and the problem, never a traceback.

train.py, val.py, detect.py, export.py, hubconf.py and models/yolo.py wrap their work in ``one_line_errors``, so a
hostile or broken weights file, YAML, dataset or image source is reported the same way everywhere. Errors outside
this list are bugs and keep their traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "bad input" (each carries a one-line message naming the file)."""
    from models.yolo import InputSizeError, ModelConfigError
    from utils.backends import BackendError
    from utils.checkpoints import CheckpointError
    from utils.core.safety import UnsafeFileError
    from utils.core.torch_utils import DeviceError
    from utils.data.config import ConfigError
    from utils.data.sources import SourceError

    return (BackendError, CheckpointError, ConfigError, DeviceError, InputSizeError, ModelConfigError, SourceError,
            UnsafeFileError, FileNotFoundError)


@contextmanager
def one_line_errors(prog: str, own: tuple[type[BaseException], ...] = (), show_type: bool = False,
                    shared: bool = True) -> Iterator[None]:
    """Turn expected errors (and the entry point's ``own``) into ``sys.exit('<prog>: <message>')``.

    ``show_type`` prefixes the error's class name (train.py's format) except for the entry point's own errors.
    ``shared=False`` catches ``own`` only: ``python models/yolo.py`` cannot import the shared list, which would import
    models.yolo a second time (as a module besides ``__main__``)."""
    try:
        yield
    except Exception as e:
        if not isinstance(e, (*(expected_errors() if shared else ()), *own)):
            raise  # a bug: keep its traceback
        msg = ' '.join(str(e).split())
        kind = f'{type(e).__name__}: ' if show_type and not isinstance(e, own) else ''
        sys.exit(f'{prog}: {kind}{msg}')
