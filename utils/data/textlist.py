"""Reading a list file (one path or URL per line): detect.py's ``.txt``/``.streams`` sources and datasets' ``.txt``
splits share it, so both say the same thing about a file that is not a text list."""
from __future__ import annotations

from pathlib import Path


def read_text_list(path: Path, of_what: str) -> str:
    """The text of list file ``path``. ValueError, one line naming the file, when it cannot be read or is not UTF-8
    text (e.g. an image renamed ``.txt``); a byte-order mark (Windows Notepad writes one) is dropped."""
    try:
        return Path(path).read_text(encoding='utf-8-sig')
    except UnicodeDecodeError:
        raise ValueError(f'{path}: not a text list of {of_what} (not UTF-8 text)') from None
    except OSError as e:
        raise ValueError(f'{path}: cannot read it ({e.strerror or type(e).__name__})') from None
