"""Module registry: how names in a model YAML become classes.

YOLOv5 resolves YAML module names with ``eval``; we resolve them through this table instead, so a YAML can
only name modules that were registered on purpose, and a typo fails with the list of valid names.

Registering a new block is one decorator::

    @register_module()
    class MyBlock(nn.Module): ...

or one line for a class you do not own: ``register_module('nn.Upsample')(nn.Upsample)``.

A backbone (a ``models.backbone.Backbone`` or a factory returning one) registers with ``kind='backbone'`` and says
which YAML argument is its weights file (``weights_arg``), so a checkpoint can rebuild it without re-reading that
file; ``list_modules('backbone')`` is what ``tests/models/test_backbones.py`` runs the backbone contract over.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar('T')

MODULES: dict[str, Callable] = {}
KINDS = ('module', 'backbone')
_KIND: dict[str, str] = {}  # name -> kind, for names registered with a kind other than 'module'
_WEIGHTS_ARG: dict[str, int] = {}  # backbone name -> index of its weights-file argument in the YAML row


def register_module(name: str | None = None, kind: str = 'module',
                    weights_arg: int | None = None) -> Callable[[T], T]:
    """Return a decorator that registers a class or factory under ``name`` (default: its ``__name__``).

    ``kind='backbone'`` marks a multi-output backbone; ``weights_arg`` is the position of its weights-file argument.
    """
    if kind not in KINDS:
        raise ValueError(f'module kind must be one of {KINDS}, got {kind!r}')

    def decorator(obj: T) -> T:
        key = name or obj.__name__
        if key in MODULES and MODULES[key] is not obj:
            raise KeyError(f'module name {key!r} is already registered to {MODULES[key]!r}')
        MODULES[key] = obj
        if kind != 'module':
            _KIND[key] = kind
        if weights_arg is not None:
            _WEIGHTS_ARG[key] = weights_arg
        return obj

    return decorator


def get_module(name: str) -> Callable:
    """Look a YAML module name up; an unknown name raises KeyError listing the registered names."""
    try:
        return MODULES[name]
    except KeyError:
        valid = ', '.join(sorted(MODULES))
        raise KeyError(f'unknown module {name!r}; registered modules are: {valid}') from None


def list_modules(kind: str | None = None) -> list[str]:
    """Sorted registered names, all of them or those of one kind (``list_modules('backbone')``)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f'module kind must be one of {KINDS}, got {kind!r}')
    return sorted(n for n in MODULES if kind is None or _KIND.get(n, 'module') == kind)


def weights_arg(name: str) -> int | None:
    """Position of a registered backbone's weights-file argument in its YAML row (None: it takes no file)."""
    return _WEIGHTS_ARG.get(name)
