"""Drivers as a dimension: psycopg 3, psycopg2 and asyncpg, everywhere the harness touches a layer's connections.

On real servers, per driver: the error a history keeps (SQLSTATE, the driver's own type, its words), the
read observer (psycopg's notice handler, psycopg2's ``connection.notices``, asyncpg's log listener), the
pool probe through the layer's own pool (no false cursor from the probe's own portal), the driver each
layer really used, and the built-ins' verdicts: sound layers pass, session-SET layers fail, a layer whose
driver prepares is told it does not work behind PgBouncer 1.18 in transaction mode. The check that turns
prepared-statement errors into that verdict is tested on canned histories first.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from harness.checks import Verdict, coverage, verdict
from harness.checks.faults import is_fault_error
from harness.checks.history import ErrorSeen, History, RowSeen, StepRecord
from harness.checks import check_history
from harness.config import resolve_config
from harness.errors import UsageError
from harness.report.explain import explain
from harness.team import observer
from harness.tenancy import drivers
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.actions import error_seen
from harness.workload.cell import run_cell
from harness.workload.named import NAMED_SCENARIOS

DRIVERS = ("psycopg", "psycopg2", "asyncpg")
ROUTES = ("direct", "session", "transaction")


# -- the pooler verdict, on canned histories ----------------------------------------------------------------
PREPARED = ErrorSeen("26000", "InvalidSQLStatementNameError", 'prepared statement "__asyncpg_stmt_3__" does not exist')


def _history(route: str, *errors: ErrorSeen) -> History:
    steps = [StepRecord(1, 0, 0, "acme", "open", style="control", pid=11),
             StepRecord(2, 0, 0, "acme", "orm_select_all", pid=11, rows=(RowSeen("product", 1, "acme"),)),
             StepRecord(3, 1, 1, "globex", "open", style="control", pid=11),
             StepRecord(4, 1, 1, "globex", "orm_select_all", pid=11, rows=(RowSeen("product", 1, "globex"),))]
    steps += [StepRecord(5 + i, 0, 0, "acme", "orm_select_all", pid=11, error=e) for i, e in enumerate(errors)]
    return History("layer", route, ("acme", "globex"), ("acme", "globex"), steps=steps)


def test_prepared_statement_errors_behind_a_pooler_mean_the_layer_does_not_work_there():
    history = _history("transaction", PREPARED, PREPARED,
                       ErrorSeen("25P02", "InFailedSQLTransactionError", "current transaction is aborted"))
    judged = verdict(check_history(history), coverage(history))
    assert judged.verdict is Verdict.CANNOT_RUN
    assert "does not work behind this pooler" in judged.reason and "2 prepared-statement error(s)" in judged.reason
    assert "__asyncpg_stmt_3__" in judged.reason


def test_a_missing_relation_of_a_style_that_does_not_gate_leaves_the_pooler_verdict_standing():
    """translate_map's qualified raw SQL fails with relation "tenant.product" does not exist wherever it runs
    (a context_lost that does not gate for a layer relying on unqualified raw SQL): not an error that stops
    the run, so the prepared-statement errors beside it still say the layer does not work behind the pooler."""
    history = _history("transaction", PREPARED)
    history.steps.append(StepRecord(9, 0, 0, "acme", "raw_select_qualified", style="raw_qualified", pid=11,
                                    error=ErrorSeen("42P01", "UndefinedTableError",
                                                    'relation "tenant.product" does not exist')))
    judged = verdict(check_history(history), coverage(history))
    assert judged.verdict is Verdict.CANNOT_RUN, judged


@pytest.mark.parametrize("route, errors", [
    ("direct", (PREPARED,)),  # no pooler moved the client: an error like any other
    ("transaction", (PREPARED, ErrorSeen("22012", "DivisionByZero", "division by zero"))),  # another error too
], ids=["direct", "with-another-error"])
def test_prepared_statement_errors_are_inconclusive_without_a_pooler_or_beside_other_errors(route, errors):
    history = _history(route, *errors)
    assert verdict(check_history(history), coverage(history)).verdict is Verdict.INCONCLUSIVE


def test_an_unknown_driver_is_refused_with_the_list(tmp_path):
    with pytest.raises(UsageError) as caught:
        resolve_config(cli={"drivers": "psycopg,pg9000"}, env={}, cwd=tmp_path)
    assert "pg9000" in str(caught.value) and "psycopg2" in str(caught.value)


# -- real servers ------------------------------------------------------------------------------------------
def _on(url, driver: str):
    return drivers.driver(driver).url(url)


def _raised(url, work) -> BaseException:
    """What ``work(connection)`` raised on a SQLAlchemy connection of the URL's driver (through ``run_sync`` on
    an async one, so the same work runs on every driver)."""
    def guarded(conn) -> BaseException:
        try:
            work(conn)
        except DBAPIError as exc:
            return exc
        raise AssertionError("nothing failed")

    if url.get_dialect().is_async:
        async def run() -> BaseException:
            engine = create_async_engine(url)
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(guarded)
            finally:
                await engine.dispose()
        return asyncio.run(run())
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return guarded(conn)
    finally:
        engine.dispose()


def _execute(url, statement: str) -> BaseException:
    """Run a failing statement through SQLAlchemy on the URL's driver; return what it raised."""
    return _raised(url, lambda conn: conn.execute(text(statement)))


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_error_keeps_its_sqlstate_the_drivers_type_and_its_words(stack, driver):
    error = error_seen(_execute(_on(stack.url("direct"), driver), "SELECT * FROM no_such_table"))
    assert error.sqlstate == "42P01", error
    assert error.message == 'relation "no_such_table" does not exist', error
    assert error.type in {"psycopg": ("UndefinedTable",), "psycopg2": ("UndefinedTable",),
                          "asyncpg": ("UndefinedTableError",)}[driver], error


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_terminated_backend_is_an_error_of_the_fault_family(stack, driver):
    error = error_seen(_execute(_on(stack.url("direct"), driver), "SELECT pg_terminate_backend(pg_backend_pid())"))
    assert is_fault_error(error), error


def _cut(driver_connection) -> None:
    """Cut a driver connection's socket under it, as a network fault does: no message from the server, the
    next read finds the connection closed."""
    transport = getattr(driver_connection, "_transport", None)  # asyncpg
    if transport is not None:
        transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        return
    with socket.socket(fileno=os.dup(driver_connection.fileno())) as raw:
        raw.shutdown(socket.SHUT_RDWR)


def _broken_during_rollback(url) -> BaseException:
    """A statement fails on purpose (division by zero), the connection is cut, and the rollback (inside the
    handler, as fail_and_rollback does) meets the broken connection: what the rollback raised."""
    def work(conn) -> None:
        try:
            conn.execute(text("SELECT 1 / 0"))
        except DBAPIError:
            _cut(conn.connection.driver_connection)
            conn.rollback()
    return _raised(url, work)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_connection_broken_during_a_rollback_is_not_the_error_being_rolled_back(stack, driver):
    """The rollback's error is raised while the division by zero is handled (its ``__context__``); it must
    keep its own nature (a broken connection, of the fault family), not take 22012 from the error before it."""
    error = error_seen(_broken_during_rollback(_on(stack.url("direct"), driver)))
    assert error.sqlstate != "22012", error
    assert is_fault_error(error), error


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_read_observer_hears_every_driver(stack, driver):
    """The observer's messages are INFO notices; each driver hands them over its own way, and each lands in
    the sink of the step that ran the statement (not in another's, not in none)."""
    observer.install()
    url = _on(stack.url("direct"), driver)
    marker = "DO $$ BEGIN RAISE INFO '" + observer.MARKER + "%', '[\"r\", \"acme\", \"product\", \"{n}\"]'; END $$"

    async def run_async() -> list:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                with observer.observing() as first:
                    await conn.execute(text(marker.format(n=1)))
                    await conn.execute(text(marker.format(n=2)))
                with observer.observing() as second:
                    await conn.execute(text(marker.format(n=3)))
                return [first, second]
        finally:
            await engine.dispose()

    if url.get_dialect().is_async:
        sinks = asyncio.run(run_async())
    else:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                with observer.observing() as first:
                    conn.execute(text(marker.format(n=1)))
                    conn.execute(text(marker.format(n=2)))
                with observer.observing() as second:
                    conn.execute(text(marker.format(n=3)))
            sinks = [first, second]
        finally:
            engine.dispose()
    assert [[o.key for o in sink] for sink in sinks] == [["1", "2"], ["3"]]
    assert sinks[0][0] == observer.Observed("r", "acme", "product", "1")


def _pool_state(stack, tenancy, strategy: str, route: str, driver: str):
    program = NAMED_SCENARIOS["pool_state"].build(DEFAULT_TENANTS)
    spec = load_strategy(strategy).on_driver(driver)
    return run_cell(stack, tenancy, spec, route, "pool_state", program)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("driver", ("psycopg2", "asyncpg"))
def test_a_sound_layer_passes_the_pool_probe_on_every_driver_without_a_false_cursor(stack, tenancy, driver, route):
    result = _pool_state(stack, tenancy, "translate_map_pinned", route, driver)
    assert result.verdict is Verdict.PASS and not result.findings, explain(result)
    assert result.coverage.probed_connections > 0, explain(result)
    assert result.driver_used.startswith(driver), result.driver_used


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("driver", ("psycopg2", "asyncpg"))
def test_a_session_set_layer_fails_on_every_driver(stack, tenancy, driver, route):
    result = _pool_state(stack, tenancy, "search_path_set", route, driver)
    assert result.verdict is Verdict.FAIL, explain(result)
    assert {f.kind for f in result.findings} & {"cross_tenant_read", "pool_pollution"}, explain(result)


def test_asyncpg_per_tenant_engines_pass_on_direct_and_cannot_run_behind_pgbouncer_1_18(stack, tenancy):
    """startup_options_search_path on asyncpg: server_settings={"search_path": ...} per tenant engine."""
    direct = _pool_state(stack, tenancy, "startup_options_search_path", "direct", "asyncpg")
    assert direct.verdict is Verdict.PASS, explain(direct)
    if stack.facts.tracks("search_path"):
        pytest.fail("this test expects the host's PgBouncer 1.18, which does not track search_path")
    refused = _pool_state(stack, tenancy, "startup_options_search_path", "transaction", "asyncpg")
    assert refused.verdict is Verdict.CANNOT_RUN and "search_path" in refused.reason, explain(refused)


def test_asyncpgs_statement_cache_does_not_work_behind_pgbouncer_1_18_in_transaction_mode(stack, tenancy):
    program = NAMED_SCENARIOS["simultaneous_tenants"].build(DEFAULT_TENANTS)
    spec = load_strategy("translate_map_prepared").on_driver("asyncpg")
    result = run_cell(stack, tenancy, spec, "transaction", "simultaneous_tenants", program)
    assert result.verdict is Verdict.CANNOT_RUN, explain(result)
    assert "does not work behind this pooler" in result.reason and "__asyncpg_stmt_" in result.reason, result.reason
    session = run_cell(stack, tenancy, spec, "session", "simultaneous_tenants", program)
    assert session.verdict is Verdict.PASS, explain(session)


class FixedDriverLayer:
    """A layer that ignores the driver of the URL it gets: it always runs on psycopg 3 (a hard-coded
    drivername, as some apps have)."""

    layout = "schema"
    models = "placeholder"

    def __init__(self, url):
        from harness.tenancy.strategies.builtin import TranslateMapPinned

        self.inner = TranslateMapPinned(url.set(drivername="postgresql+psycopg"))
        self.engine = self.inner.engine

    def session(self, tenant):
        return self.inner.session(tenant)

    def close(self):
        self.inner.close()


def test_a_cell_whose_layer_ignored_the_driver_asked_does_not_pass(stack, tenancy, harness_config):
    from harness.workload.scenarios import CellContext, run_scenario

    spec = load_strategy("test_drivers:FixedDriverLayer").on_driver("psycopg2")
    result = run_scenario(CellContext(stack, tenancy, harness_config, seed=1, gate=True), spec, "direct",
                          "fresh_session")
    assert result.driver_used.startswith("psycopg "), result.driver_used
    assert result.verdict is Verdict.INCONCLUSIVE, explain(result)
    assert "ignored the driver" in result.reason and "asked psycopg2" in result.reason


def test_the_hammer_probes_the_pools_of_an_async_layers_threads(stack, tenancy, harness_config, tmp_path):
    """An async layer runs one instance per hammer thread (an event loop each): the pollution a thread's
    requests leave on its own pool is read before that instance closes (on asyncpg every built-in is one)."""
    import dataclasses

    from harness.workload.scenarios import CellContext, run_scenario

    config = dataclasses.replace(harness_config, report_dir=tmp_path, hammer_requests=120, hammer_seconds=5.0)
    ctx = CellContext(stack, tenancy, config, seed=1234, gate=True)
    result = run_scenario(ctx, load_strategy("search_path_restore").on_driver("asyncpg"), "direct", "hammer")
    assert result.verdict is Verdict.FAIL, explain(result)
    assert result.coverage.probed_connections > 0 and result.figures["pool_checkouts"] > 0, result.figures
    assert any(f.kind == "pool_pollution" and "engine" in f.explanation for f in result.findings), explain(result)


def test_the_hammer_names_the_driver_of_an_async_layer_with_no_engine_of_its_own(stack, tenancy, harness_config,
                                                                                   tmp_path):
    """One engine per tenant (no ``engine`` attribute) on asyncpg: only the hammer's per-thread instances open
    sessions, and the cell still names the driver they ran on (else "none seen", and a layer that ignored the
    asked driver would pass unnoticed)."""
    import dataclasses

    from harness.workload.scenarios import CellContext, run_scenario

    config = dataclasses.replace(harness_config, report_dir=tmp_path, hammer_requests=60, hammer_seconds=5.0)
    ctx = CellContext(stack, tenancy, config, seed=1234, gate=True)
    result = run_scenario(ctx, load_strategy("connect_event_search_path").on_driver("asyncpg"), "direct", "hammer")
    assert result.verdict is Verdict.PASS, explain(result)
    assert result.driver_used.startswith("asyncpg "), result.driver_used


def test_schema_sql_without_models_is_refused_rather_than_ignored(tmp_path):
    (tmp_path / "types.sql").write_text("CREATE DOMAIN email AS text")
    with pytest.raises(UsageError) as caught:
        resolve_config(cli={"schema_sql": str(tmp_path / "types.sql")}, env={}, cwd=tmp_path)
    assert "--models" in str(caught.value) and "would not be read" in str(caught.value)
