"""The session-state probe: every kind of state a pooled connection can carry is compared with a pristine
connection, and each difference is a pool_pollution finding that names its kind.

On real servers, for each kind, a layer that leaves it behind (tests/state_strategies.py) is caught on all
three routes and its twin that cleans up passes. Where the state is caught differs by route, and the tests
say so: on direct and session the strategy's own pool keeps the connection (the engine probe reads it; in
session mode the pooled client holds its server, and PgBouncer's DISCARD ALL runs only when that client
disconnects); in transaction mode no client keeps a server across transactions, so none of these kinds
(session settings, custom settings, role, prepared statements, temp tables, advisory locks, LISTEN, WITH
HOLD cursors) can follow the client that made it into its next transaction, yet each stays on the server,
which PgBouncer hands to the next client without a reset: the PgBouncer probe reads it there. (An open
transaction is the one kind PgBouncer never lets go: the server stays with its client.)
"""

from __future__ import annotations

import dataclasses
import json

import psycopg
import pytest

import state_strategies
from harness.checks.history import (DEFAULT_SEARCH_PATH, STATE_KINDS, ConnectionState, History, ProbeRecord,
                                    StepRecord)
from harness.checks.pool import check_pool_pollution
from harness.report.explain import explain
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.cell import run_cell
from harness.workload.named import NAMED_SCENARIOS
from harness.workload.probe import setting_names_in

ROUTES = ("direct", "session", "transaction")
FUNCTION_SETTING = "probe.by_function"


# -- the check, on canned states --------------------------------------------------------------------
def _state(**changes) -> ConnectionState:
    return ConnectionState(**{"pid": 7, "search_path": DEFAULT_SEARCH_PATH, "current_user": "app",
                              "session_user": "app", "login_user": "app", **changes})


@pytest.mark.parametrize("changes, kind, text", [
    ({"session_settings": (("statement_timeout", "5000", "0"),)}, "session_setting",
     "session setting statement_timeout = '5000' (a fresh connection has '0')"),
    ({"settings": (("probe.tenant", "acme"),)}, "custom_setting", "custom setting probe.tenant = 'acme'"),
    ({"current_user": "other"}, "role", "role other (logged in as app)"),
    ({"current_user": "other", "session_user": "other"}, "session_authorization",
     "session authorization other (logged in as app)"),
    ({"prepared_statements": ("q1",)}, "prepared_statement", "1 SQL prepared statement(s): q1"),
    ({"temp_tables": 1, "temp_table_names": ("scratch",)}, "temp_table", "1 temp table(s): scratch"),
    ({"advisory_locks": 1, "advisory_lock_keys": ("4242",)}, "advisory_lock", "1 advisory lock(s): 4242"),
    ({"listen_channels": 1, "channel_names": ("jobs",)}, "listen", "LISTEN on 1 channel(s): jobs"),
    ({"cursors": ("c1",)}, "cursor", "1 WITH HOLD cursor(s): c1"),
    ({"open_transaction": True}, "open_transaction", "an open transaction"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_each_kind_of_state_is_a_difference_that_names_its_kind(changes, kind, text):
    state = _state(**changes)
    assert state.differences() == [(kind, text)]
    assert STATE_KINDS[kind][0].lower() in text.lower()  # the finding's words name the kind of the legend


def test_a_pristine_state_has_no_difference_and_a_state_round_trips_through_json():
    assert _state().differences() == []
    polluted = _state(session_settings=(("statement_timeout", "5000", "0"),), cursors=("c1",))
    assert ConnectionState.from_json(json.loads(json.dumps(dataclasses.asdict(polluted)))) == polluted


def test_the_finding_names_the_kind_its_value_and_the_request_that_left_it():
    history = History("demo", "transaction", ("acme",), ("acme",), steps=[
        StepRecord(1, 0, 0, "acme", "orm_select_all", pid=7),
        StepRecord(2, 0, 0, "acme", "end_request", style="control")])
    history.probes = [ProbeRecord(3, 2, "pgbouncer:transaction", (
        _state(session_settings=(("default_transaction_read_only", "on", "off"),)),))]
    (finding,) = check_pool_pollution(history)
    assert finding.kind == "pool_pollution" and finding.steps == (2,)
    assert "session setting default_transaction_read_only = 'on' (a fresh connection has 'off')" \
        in finding.explanation
    assert "client 0's request 0 for 'acme'" in finding.explanation


@pytest.mark.parametrize("statement, parameters, names", [
    ("SET app.tenant = 'acme'", None, {"app.tenant"}),
    ("set session my.key TO 'x'", None, {"my.key"}),
    ("SET LOCAL app.tenant_id = 3", None, {"app.tenant_id"}),
    ("SELECT set_config('app.who', %(t)s, false)", {"t": "acme"}, {"app.who"}),
    ("SELECT set_config(%(name)s, %(tenant)s, false)", {"name": "probe.tenant", "tenant": "acme"},
     {"probe.tenant"}),
    ("SELECT set_config(%s, %s, true)", ("x.y", "acme"), {"x.y"}),
    ("UPDATE acme.product SET name=%(name)s", {"name": "a.b"}, set()),  # no SET of a setting
    ("SET search_path TO acme, public", None, set()),  # not a custom setting
], ids=["set", "set-session", "set-local", "set_config-inline", "set_config-bound", "set_config-positional",
        "update", "search_path"])
def test_custom_setting_names_are_found_in_statements(statement, parameters, names):
    assert setting_names_in(statement, parameters) == names


# -- real servers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_role(stack):
    """A role the login role may SET ROLE to, the superuser's login for SET SESSION AUTHORIZATION, and a
    function that reads a custom setting (as a row-level-security layer's helper would)."""
    url = stack.superuser_url
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=stack.database, autocommit=True) as conn:
        role = state_strategies.OTHER_ROLE
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"GRANT {role} TO {stack.app_role}")
        conn.execute(f"CREATE OR REPLACE FUNCTION public.probe_function_tenant() RETURNS text LANGUAGE sql "
                     f"AS $$ SELECT current_setting('{FUNCTION_SETTING}', true) $$")
        state_strategies.SUPERUSER = (url.username, url.password)
        yield role
        conn.execute("DROP FUNCTION public.probe_function_tenant()")


@pytest.fixture
def clean_servers(stack):
    """The layers here leave state on PgBouncer's servers on purpose: close them after each test."""
    yield
    for route in stack.bouncers:
        stack.admin(route, "RECONNECT")


def _run(stack, tenancy, layer: str, route: str):
    program = NAMED_SCENARIOS["pool_state"].build(DEFAULT_TENANTS)
    return run_cell(stack, tenancy, load_strategy(f"state_strategies:{layer}"), route, "session_state", program)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("layer", state_strategies.LEAVERS, ids=lambda layer: layer.__name__)
def test_state_a_layer_leaves_behind_is_caught_and_named(stack, tenancy, other_role, clean_servers, layer, route):
    result = _run(stack, tenancy, layer.__name__, route)
    label = STATE_KINDS[layer.KIND][0]
    caught = [f for f in result.findings if f.kind == "pool_pollution" and label in f.explanation]
    assert caught and result.verdict.value == "fail", explain(result)
    # Where the state is read: the pooled connection the layer keeps, or the server PgBouncer keeps. The
    # PgBouncer probe reads the servers of the route's login role only: the superuser-login layer's state is
    # read through its own engine on every route (in transaction mode its next transaction got that server).
    where = "pgbouncer:transaction" if route == "transaction" and layer.KIND != "session_authorization" \
        else "engine"
    assert any(f"{where} connection" in f.explanation for f in caught), explain(result)
    assert any("client " in f.explanation and "'s request " in f.explanation for f in caught), explain(result)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("layer", state_strategies.LEAVERS, ids=lambda layer: layer.__name__)
def test_the_twin_that_cleans_up_passes(stack, tenancy, other_role, clean_servers, layer, route):
    result = _run(stack, tenancy, layer.__name__ + "Cleaned", route)
    assert not result.findings and result.verdict.value == "pass", explain(result)
    assert result.coverage.probed_connections, explain(result)


@pytest.mark.parametrize("route", ROUTES)
def test_a_setting_only_a_function_reads_is_found_in_the_catalog(stack, tenancy, other_role, clean_servers, route):
    """Set through the driver, past SQLAlchemy (no statement the harness records names it): the name comes
    from the function that reads it with current_setting()."""
    result = _run(stack, tenancy, "FunctionSetting", route)
    caught = [f for f in result.findings if f.kind == "pool_pollution"
              and f"custom setting {FUNCTION_SETTING} = " in f.explanation]
    assert caught and result.verdict.value == "fail", explain(result)


def test_the_report_has_a_legend_of_every_state_kind(tmp_path):
    from harness.report.writer import render_html

    html = render_html({"run_id": "r", "started": "", "seconds": 0, "environment": {"profile": "ci"},
                        "builtin_self_check": True, "strategies": [], "cells": [], "migration": [],
                        "scan": None, "not_run": [], "verdict": "pass"}, [])
    legend = html[html.index('<details id="state-kinds">'):]
    legend = legend[:legend.index("</details>")]
    for kind, (label, what, clears) in STATE_KINDS.items():
        assert f'<tr id="state-{kind}"><th>{label}</th>' in legend


def test_setting_names_are_recorded_from_any_engine_while_listening_only(stack):
    from sqlalchemy import create_engine, text

    from harness.workload.probe import SettingNames

    engine = create_engine(stack.url("direct"), connect_args={"prepare_threshold": None})
    names = SettingNames()
    try:
        with engine.connect() as conn:
            names.start()
            conn.execute(text("SELECT set_config(:name, 'x', true)"), {"name": "probe.while_listening"})
            names.stop()
            conn.execute(text("SET LOCAL probe.after_stop = 'y'"))
    finally:
        names.stop()
        engine.dispose()
    assert names.names == {"probe.while_listening"}
