"""Fixtures for the gateway's database and auth tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A SQLite file URL in a folder that does not exist yet (Database must create it)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'gateway.db'}"
