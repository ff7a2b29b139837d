"""
Public names of the integrations say where users import them from.

The same fix-up as the core's (trio's `fixup_module_metadata`), kept here because the
integrations use only the public core API: ``resilient.integrations.aiohttp
.ResilienceMiddleware``, not ``resilient.integrations.aiohttp._client...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import FunctionType

__all__ = ["publish"]


def publish(namespace: Mapping[str, object]) -> None:
    """
    Point the ``__module__`` of the namespace's public names at the namespace's module.

    Only classes and functions that a private module of the integrations defined.
    """
    module = str(namespace["__name__"])
    names: list[str] = namespace["__all__"]  # type: ignore[assignment]  # a module's __all__
    for name in names:
        obj = namespace[name]
        if isinstance(obj, type | FunctionType) and "._" in obj.__module__:
            obj.__module__ = module
