"""
Public names say where users import them from (as trio's `fixup_module_metadata` does).

A class defined in ``resilient._engine.errors`` and exported by `resilient` shows
``resilient.CircuitOpenError`` in reprs, tracebacks, pickles, docs and ``error.type``
span attributes, not the private path, which is free to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import FunctionType

__all__ = ["publish"]


def publish(namespace: Mapping[str, object]) -> None:
    """
    Point the ``__module__`` of the namespace's public names at the namespace's module.

    Only classes and functions in ``namespace["__all__"]`` that a private module defined.

    Constants and type aliases have no module of their own and are left alone.
    """
    module = str(namespace["__name__"])
    names: list[str] = namespace["__all__"]  # type: ignore[assignment]  # a module's __all__
    for name in names:
        obj = namespace[name]
        if isinstance(obj, type | FunctionType) and _is_private(obj.__module__):
            obj.__module__ = module


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))
