"""How bad input is reported: one line, never a traceback.

``one_line`` flattens an error's text; ``exit_on`` turns the error types a command expects into
``sys.exit('<prog>: <message>')``. Which types count as bad input for the entry points is decided at the top
(utils/cli.py); this mechanism is foundation so that any floor (e.g. ``python models/yolo.py``) can use it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ErrorTypes = tuple[type[BaseException], ...]


def one_line(e: BaseException | str, limit: int | None = None) -> str:
    """The error's text on one line (runs of whitespace and newlines become one space), cut to ``limit`` characters."""
    text = ' '.join(str(e).split())
    return text if limit is None else text[:limit]


@contextmanager
def exit_on(prog: str, errors: ErrorTypes | Callable[[], ErrorTypes], typed: ErrorTypes | Callable[[], ErrorTypes] = ()
            ) -> Iterator[None]:
    """Turn ``errors`` into ``sys.exit('<prog>: <message>')``; those in ``typed`` are prefixed with their class name
    (train.py's format). Other exceptions are bugs and keep their traceback. Either tuple may be given as a function
    that returns it, called only when an error arrives (so the error types' modules are imported only then). Ctrl-C
    ends with ``<prog>: interrupted`` and the shell's status for SIGINT (130), not a traceback from inside a layer."""
    try:
        yield
    except KeyboardInterrupt:
        print(f'\n{prog}: interrupted', file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if not isinstance(e, errors() if callable(errors) else errors):
            raise
        kind = f'{type(e).__name__}: ' if isinstance(e, typed() if callable(typed) else typed) else ''
        sys.exit(f'{prog}: {kind}{one_line(e)}')
