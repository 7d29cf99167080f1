"""Fixtures of the browser tests; the services, the stand-in, fake PVE servers and processes come
from tests/conftest.py, Chromium and `streamlit run` from tests/support."""

from __future__ import annotations

import pytest

from tests.support.browser import chromium


@pytest.fixture
def browser():
    """Debian's Chromium, headless, through Playwright (one per test: pages of a test never outlive it)."""
    with chromium() as b:
        yield b
