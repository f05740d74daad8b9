"""The clinic's tenancy layer as the isolation harness drives it: the app's own db module on the route URL.

The harness calls :func:`layer` with the URL of the route under test; its driver (``--driver``) decides
the engine: psycopg2 or psycopg 3 give the app's sync sessions, an async URL (asyncpg) its AsyncSessions.
Each request is the app's dependency generator, run as FastAPI runs it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from clinic.db import Database


class ClinicLayer:
    # The app runs raw SQL only in its own code paths (its jobs, given to the harness as actions): the
    # harness's built-in raw text() steps are measured and shown, they do not gate the release.
    raw_sql = ()

    def __init__(self, url: Any) -> None:
        self.database = Database(url)
        self.engine = self.database.engine

    def session(self, tenant: str):
        if self.database.is_async:
            return contextlib.asynccontextmanager(self.database.get_async_session)(tenant)
        return contextlib.contextmanager(self.database.get_session)(tenant)

    def close(self) -> Any:
        return self.database.dispose()


def layer(url: Any) -> ClinicLayer:
    return ClinicLayer(url)
