"""
Where things are: the repository root, for tests that read docs or run its programs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout (or copy) these tests belong to."""
