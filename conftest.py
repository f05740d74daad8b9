"""Project-wide pytest wiring: fast tests (no server) run before the real-server ones.

The fixtures themselves come from the ``harness`` pytest plugin (entry point
``pytest11``), so scenarios and tests use them without imports.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("server") is not None)
