"""Fixtures shared by the test modules."""

import pytest

from mmprep.config import settings


@pytest.fixture
def fresh_settings():
    """``MMPREP_*`` read again from the environment during the test, and after it (monkeypatch restores it)."""
    settings.cache_clear()
    yield
    settings.cache_clear()
