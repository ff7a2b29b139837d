"""
Reference cycles a block leaves behind: what only the garbage collector would free.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cycles() -> Iterator[list[str]]:
    """
    Run the block with the gc off; after it, the list holds the type name of each object
    left in a reference cycle (found by a collection saving what it would have freed).
    """
    found: list[str] = []
    gc.collect()  # what came before the block is not its own
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(type(garbage).__name__ for garbage in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
