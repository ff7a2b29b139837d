"""
A sharded, replicated, durable key-value service built on `resilient`.

Run ``python -m examples.kv --help``; the design is in ``examples/kv/README.md``.
`KVClient` and `KVError` load on first use, so that ``python -m examples.kv`` run without
the ``kv`` extra says which extra to install instead of failing in an import traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import KVClient, KVError

__all__ = ["EXTRA_MODULES", "KVClient", "KVError", "missing_extra"]

EXTRA_MODULES = frozenset(
    {"aiohttp", "yarl", "multidict", "prometheus_client", "opentelemetry", "rich", "uvloop"}
)
"""Top-level modules the ``kv`` extra installs (directly or through aiohttp)."""


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """
    What to tell a user whose import failed for lack of the ``kv`` extra; None otherwise.
    """
    name = (error.name or "").partition(".")[0]
    if name not in EXTRA_MODULES:
        return None
    return (
        f"examples.kv needs the kv extra ({name!r} is not installed): from the repository's "
        "root run it with the venv that has it (.venv/bin/python -m examples.kv ..., or "
        "'. .venv/bin/activate' first), or install it: pip install -e '.[kv]'"
    )


def __getattr__(name: str) -> object:
    if name not in {"KVClient", "KVError"}:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import client  # noqa: PLC0415 (lazy: a missing kv extra becomes one line)
    except ModuleNotFoundError as error:
        message = missing_extra(error)
        if message is None:
            raise
        raise ImportError(message, name=error.name) from error
    return getattr(client, name)
