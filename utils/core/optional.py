"""Optional packages (OpenVINO, NNCF): one line naming the package and how to install it when one is missing.

Both the exporters (utils/export) and the runners (utils/inference) need this, so it sits on the foundation floor.
"""
from __future__ import annotations

import importlib.util

INSTALL_HINT = 'pip install -r requirements-openvino.txt'


class MissingPackageError(ImportError):
    """An optional package a requested format needs is not installed (one line naming it)."""


def require(what: str, *packages: str) -> None:
    """Raise MissingPackageError naming the first of ``packages`` that is not installed."""
    for p in packages:
        if importlib.util.find_spec(p) is None:
            raise MissingPackageError(f'{what} needs the {p!r} package, which is not installed: {INSTALL_HINT}')
