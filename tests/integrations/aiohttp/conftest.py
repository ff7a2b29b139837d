"""
Fixtures of the aiohttp integration tests (`serve` and `tracer` come from above).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """
    A plain client session: headers are sent exactly as the test writes them.
    """
    async with aiohttp.ClientSession() as session:
        yield session
