"""A real browser for page tests (skipped where Chromium is not installed)."""

import pytest


@pytest.fixture
def browser():
    from tests.webapp.browser import start_chromium

    driver = start_chromium()
    yield driver
    driver.quit()
