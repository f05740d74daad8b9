"""Stacks of the deployments whose pooler is not PgBouncer: Pgpool-II (bookworm-pgpool) and pgagroal
(trixie-pgagroal), started natively, their state probe on real servers, and the verdict a pooler's reset
decides.

The layer under test is the built-in ``search_path_per_connection``: one engine per tenant on NullPool, bound
in the connect event, closing its connection after every session. What the next client of the server gets
is the pooler's doing alone: Pgpool-II's ``reset_query_list`` (``ABORT; DISCARD ALL`` by default), pgagroal's
session pipeline (reset) or transaction pipeline (no reset).
"""

from __future__ import annotations

import psycopg
import pytest

from harness.checks.verdict import Verdict
from harness.config import resolve_config
from harness.deployments import POOLERS
from harness.pytest_plugin import provisioned
from harness.report.explain import explain
from harness.stack import start_stack
from harness.stack.process import pid_alive
from harness.stack.stack import Missing
from harness.tenancy.strategy import load_strategy
from harness.workload.scenarios import CellContext, run_scenario


def _config(tmp_path, deployment: str, **settings):
    return resolve_config({"deployment": deployment, "backend": "native", **settings}, env={}, cwd=tmp_path)


def _client(stack, route: str) -> psycopg.Connection:
    url = stack.url(route)
    return psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                           dbname=url.database, autocommit=True)


@pytest.mark.parametrize("deployment, modes", [("bookworm-pgpool", ("direct", "session")),
                                                ("trixie-pgagroal", ("direct", "session", "transaction"))])
def test_a_deployment_of_another_pooler_boots_it_on_its_own_modes_and_stops_it(tmp_path, deployment, modes):
    config = _config(tmp_path, deployment)
    with start_stack(config) as stack:
        kind = stack.pooler
        assert kind == {"bookworm-pgpool": "pgpool", "trixie-pgagroal": "pgagroal"}[deployment]
        assert tuple(stack.routes) == modes and set(stack.poolers) == set(modes) - {"direct"}
        assert all(part.kind == kind for part in stack.poolers.values()) and not stack.bouncers
        assert stack.versions[kind] == {"pgpool": "4.3.5", "pgagroal": "1.6.0"}[kind]
        if kind == "pgpool":
            assert stack.why_not(Missing.ROUTE, "transaction") == POOLERS["pgpool"].lacks
            assert stack.pooler_settings["session"]["reset_query_list"] == "ABORT;DISCARD ALL"
        else:
            assert {route: s["pipeline"] for route, s in stack.pooler_settings.items()} == \
                {"session": "performance", "transaction": "transaction"}
        for route in modes:  # the login role reaches the stack's database on every route
            with _client(stack, route) as conn:
                assert conn.execute("SELECT current_user, current_database()").fetchone() == \
                    (stack.app_role, stack.database)
        processes = [part.pid for part in stack.poolers.values()]
    assert processes and not any(pid_alive(pid) for pid in processes)


@pytest.mark.parametrize("deployment, settings, pooled, verdict, when", [
    ("bookworm-pgpool", {}, "session", Verdict.PASS, "pgpool"),
    ("bookworm-pgpool", {"pgpool_set": "reset_query_list=ABORT"}, "session", Verdict.FAIL,
     "pgpool_keeps_session_state"),
    ("trixie-pgagroal", {}, "session", Verdict.PASS, "pgagroal"),
    ("trixie-pgagroal", {}, "transaction", Verdict.FAIL, "pgagroal"),
], ids=["pgpool", "pgpool+ABORT", "pgagroal-session", "pgagroal-transaction"])
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_the_search_path_a_closed_connection_leaves_reaches_the_next_client_as_the_pooler_resets(
        tmp_path, deployment, settings, pooled, verdict, when, driver):
    """The probe reads the servers the pooler keeps for the next client, logging in as the layer's driver
    does (Pgpool-II hands a cached backend only to the same startup packet); the verdict is the one the
    expectation table requires for the facts the stack read (its reset_query_list, its pipeline)."""
    config = _config(tmp_path, deployment, driver=driver, **settings)
    spec = load_strategy("search_path_per_connection").on_driver(driver)
    with start_stack(config) as stack, provisioned(stack, config) as tenancy:
        result = run_scenario(CellContext(stack, tenancy, config, seed=1, gate=False), spec, pooled, "pool_state")
        assert result.verdict is verdict and result.as_required, explain(result)
        assert result.required.when == when, result.required
        assert result.coverage.probed_connections, explain(result)
        left = [f for f in result.findings if f.kind == "pool_pollution"]
        if verdict is Verdict.FAIL:
            assert any(f"{stack.pooler}:{pooled} connection" in f.explanation for f in left), explain(result)
            assert "search_path" in explain(result)
        else:
            assert not left, explain(result)
