"""Atomic outputs: an export is written under a temporary name next to its target and renamed only when complete,
so a failed or interrupted export leaves nothing behind (and never half of a file a user might run)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


@contextmanager
def atomic_output(target: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (a file path, or an empty directory when ``is_dir``); on normal exit
    it replaces ``target``, on any exception it is deleted and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f'.{target.name}.', suffix='.tmp', dir=target.parent))
    if is_dir:  # mkdtemp makes it private (0700); the result is an ordinary directory (0777 less the umask)
        mask = os.umask(0)
        os.umask(mask)
        work.chmod(0o777 & ~mask)
    tmp = work if is_dir else work / target.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f'{target}: the export wrote nothing')
        if is_dir:
            _remove(target)  # os.replace cannot replace a non-empty directory
        os.replace(tmp, target)
    finally:
        _remove(work)


@contextmanager
def scratch_dir(near: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``near`` (same file system, so large intermediates never fill /tmp), removed on
    exit whatever happens."""
    near = Path(near)
    work = Path(tempfile.mkdtemp(prefix=f'.{near.stem}.', suffix='.work', dir=near.parent))
    try:
        yield work
    finally:
        _remove(work)
