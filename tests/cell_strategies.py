"""Strategies used by tests/test_cells.py (importable as ``cell_strategies``)."""

from __future__ import annotations

from verdict_strategies import SharedEngine


class WrongPassword(SharedEngine):
    """A layer whose engine cannot log in: every data step fails with an error that is not isolation."""

    raw_sql = ("unqualified",)  # the interface's default

    def __init__(self, url):
        super().__init__(url.set(password="wrong"))
