"""Strategies used by tests/test_cells.py (importable as ``cell_strategies``)."""

from __future__ import annotations

import contextlib

from sqlalchemy import create_engine
from sqlalchemy.orm import Session


class WrongPassword:
    """A layer whose engine cannot log in: every data step fails with an error that is not isolation."""

    def __init__(self, url):
        self.engine = create_engine(url.set(password="wrong"), connect_args={"prepare_threshold": None})

    @contextlib.contextmanager
    def session(self, tenant):
        with Session(self.engine.execution_options(schema_translate_map={"tenant": tenant})) as session:
            yield session

    def close(self):
        self.engine.dispose()
