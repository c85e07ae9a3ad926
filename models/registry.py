"""Module registry: how names in a model YAML become classes.

YOLOv5 resolves YAML module names with ``eval``; we resolve them through this table instead, so a YAML can
only name modules that were registered on purpose, and a typo fails with the list of valid names.

Registering a new block is one decorator::

    @register_module()
    class MyBlock(nn.Module): ...

or one line for a class you do not own: ``register_module('nn.Upsample')(nn.Upsample)``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar('T')

MODULES: dict[str, Callable] = {}


def register_module(name: str | None = None) -> Callable[[T], T]:
    """Return a decorator that registers a class or factory under ``name`` (default: its ``__name__``)."""

    def decorator(obj: T) -> T:
        key = name or obj.__name__
        if key in MODULES and MODULES[key] is not obj:
            raise KeyError(f'module name {key!r} is already registered to {MODULES[key]!r}')
        MODULES[key] = obj
        return obj

    return decorator


def get_module(name: str) -> Callable:
    """Look a YAML module name up; an unknown name raises KeyError listing the registered names."""
    try:
        return MODULES[name]
    except KeyError:
        valid = ', '.join(sorted(MODULES))
        raise KeyError(f'unknown module {name!r}; registered modules are: {valid}') from None
