"""
Shapes shared by the tests that serve aiohttp applications (fixtures in conftest.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

__all__ = ["Serve"]

Serve = Callable[[web.Application], Awaitable[URL]]
