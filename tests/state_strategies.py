"""Layers that leave one kind of session state on a pooled connection, and their twins that clean it up,
used by tests/test_state_probe.py (importable as ``state_strategies``).

Each is the translate-map layer (sound) plus a unit of work as the request ends: in one transaction it
takes the state (``LEAVE``), and the twin (``...Cleaned``) releases it before that transaction commits
(``CLEAN``). Taking and releasing it in one transaction is what works on every route: behind PgBouncer in
transaction mode the next transaction may run on another server, so a release in a later transaction
can miss the server that holds the state.

``OTHER_ROLE`` is a role the login role is a member of, made by the test module; ``SUPERUSER`` the
superuser's name and password, set by the test module for the session-authorization layer (the app's
login role cannot ``SET SESSION AUTHORIZATION``).
"""

from __future__ import annotations

import contextlib

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

OTHER_ROLE = "state_probe_other"
SUPERUSER: tuple[str, str] | None = None  # (user, password), set by the test module
LOCK_KEY = 4242


class _LeavesState:
    layout = "schema"
    models = "placeholder"
    KIND = ""  # the state kind (harness.checks.history.STATE_KINDS) the probe must name
    LEAVE: tuple[str, ...] = ()  # statements run as the request ends; ":tenant" is bound
    UNLESS = ""  # a query returning true when the state is already there (so LEAVE would fail)
    CLEAN: tuple[str, ...] = ()  # what the twin runs in the same transaction before it commits

    def __init__(self, url):
        self.engine = create_engine(self.login(url), connect_args={"prepare_threshold": None}, pool_size=3,
                                    max_overflow=3)

    def login(self, url):
        return url

    @contextlib.contextmanager
    def session(self, tenant):
        bound = self.engine.execution_options(schema_translate_map={"tenant": tenant})
        with Session(bound) as session:
            try:
                yield session
            finally:
                session.rollback()
                if not (self.UNLESS and session.execute(text(self.UNLESS)).scalar()):
                    for statement in self.LEAVE:
                        session.execute(text(statement), self.bound(tenant))
                for statement in self.CLEAN:
                    session.execute(text(statement), self.bound(tenant))
                session.commit()

    def bound(self, tenant):
        return {"tenant": tenant}

    def close(self):
        self.engine.dispose()


def _twin(layer: type, clean: tuple[str, ...]) -> type:
    """The twin of ``layer``: it releases the state in the transaction that took it."""
    return type(layer.__name__ + "Cleaned", (layer,), {"CLEAN": clean, "__doc__": f"{layer.__name__}, cleaned up."})


def _layer(name: str, kind: str, leave: str, unless: str = "", doc: str = "") -> type:
    """A layer that leaves one kind of state with one statement (``unless`` the state is already there)."""
    return type(name, (_LeavesState,), {"KIND": kind, "LEAVE": (leave,), "UNLESS": unless,
                                        "__doc__": doc or f"Leaves {kind}: {leave}."})


StatementTimeout = _layer("StatementTimeout", "session_setting", "SET statement_timeout = '5s'")
ReadOnly = _layer("ReadOnly", "session_setting", "SET default_transaction_read_only = on",
                  doc="default_transaction_read_only left on: the next request cannot write.")
SetRole = _layer("SetRole", "role", f"SET ROLE {OTHER_ROLE}")
Prepared = _layer("Prepared", "prepared_statement", "PREPARE probe_statement AS SELECT 1",
                  unless="SELECT count(*) > 0 FROM pg_prepared_statements WHERE name = 'probe_statement'")
TempTable = _layer("TempTable", "temp_table", "CREATE TEMP TABLE IF NOT EXISTS probe_scratch (x int)")
# try: another pooled connection holding the lock must not block this one
AdvisoryLock = _layer("AdvisoryLock", "advisory_lock", f"SELECT pg_try_advisory_lock({LOCK_KEY})")
Listen = _layer("Listen", "listen", "LISTEN probe_channel")
HoldCursor = _layer("HoldCursor", "cursor", "DECLARE probe_cursor CURSOR WITH HOLD FOR SELECT 1",
                    unless="SELECT count(*) > 0 FROM pg_cursors WHERE name = 'probe_cursor'")


class UndeclaredSetting(_LeavesState):
    """A custom setting the layer does not declare in ``settings``, its name bound as a parameter."""

    KIND = "custom_setting"
    LEAVE = ("SELECT set_config(:name, :tenant, false)",)

    def bound(self, tenant):
        return {"tenant": tenant, "name": "probe.tenant"}


class SessionAuthorization(_LeavesState):
    """Logs in as the superuser (only a superuser login may) and leaves another session user."""

    KIND = "session_authorization"
    LEAVE = (f"SET SESSION AUTHORIZATION {OTHER_ROLE}",)

    def login(self, url):
        assert SUPERUSER is not None, "the test module sets state_strategies.SUPERUSER"
        return url.set(username=SUPERUSER[0], password=SUPERUSER[1])


class FunctionSetting(_LeavesState):
    """A custom setting set through the driver's own connection (SQLAlchemy sees no statement), whose name
    only a function in the database reads (made by the test module)."""

    KIND = "custom_setting"

    @contextlib.contextmanager
    def session(self, tenant):
        with super().session(tenant) as session:
            yield session
            driver = session.connection().connection.driver_connection
            driver.execute("SELECT set_config('probe.by_function', %s, false)", [tenant])
            session.commit()


StatementTimeoutCleaned = _twin(StatementTimeout, ("RESET statement_timeout",))
ReadOnlyCleaned = _twin(ReadOnly, ("RESET default_transaction_read_only",))
UndeclaredSettingCleaned = _twin(UndeclaredSetting, ("RESET probe.tenant",))
SetRoleCleaned = _twin(SetRole, ("RESET ROLE",))
# RESET ALL would not do: it leaves the session authorization as it is.
SessionAuthorizationCleaned = _twin(SessionAuthorization, ("RESET SESSION AUTHORIZATION",))
PreparedCleaned = _twin(Prepared, ("DEALLOCATE probe_statement",))
TempTableCleaned = _twin(TempTable, ("DROP TABLE probe_scratch",))
AdvisoryLockCleaned = _twin(AdvisoryLock, ("SELECT pg_advisory_unlock_all()",))
ListenCleaned = _twin(Listen, ("UNLISTEN probe_channel",))
HoldCursorCleaned = _twin(HoldCursor, ("CLOSE probe_cursor",))

LEAVERS = (StatementTimeout, ReadOnly, UndeclaredSetting, SetRole, SessionAuthorization, Prepared, TempTable,
           AdvisoryLock, Listen, HoldCursor)
