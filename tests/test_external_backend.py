"""The external backend, pointed at a stack the native backend started.

Same verdicts as the native backend; the safety refusal; only its own
schemas created and dropped, also after a killed run; missing routes reported
as not run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from harness.config import resolve_config
from harness.errors import SetupError, UsageError
from harness.stack import start_stack
from harness.stack.external import COMMENT_PREFIX, harness_schemas
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import BUILTIN_SPECS
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload.named import NAMED_SCENARIOS

pytestmark = pytest.mark.external
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A native stack of this module's own, standing in for someone's servers."""
    config = resolve_config({"backend": "native"}, cwd=tmp_path_factory.mktemp("target"))
    with start_stack(config) as running:
        yield running


def dsn(url) -> str:
    return url.render_as_string(hide_password=False)


def external_settings(target, routes=("direct", "session", "transaction"), **extra) -> dict:
    settings = {"backend": "external", "superuser_dsn": dsn(target.superuser_url), **extra}
    for route in routes:
        settings[f"{route}_dsn"] = dsn(target.url(route))
    return settings


def cli_args(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        if value is True:
            args.append("--" + key.replace("_", "-"))
        else:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args


def schemas(target) -> set[str]:
    with psycopg.connect(**conninfo(target.superuser_url)) as conn:
        return {row[0] for row in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'")}


def conninfo(url) -> dict:
    return {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
            "dbname": url.database, "autocommit": True}


def verify(settings: dict, report_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "verify", *cli_args(settings),
                           "--report-dir", str(report_dir), "--seed", "1", *extra],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


def results(report_dir: Path) -> dict:
    return json.loads((report_dir / "latest" / "results.json").read_text())


def matrix(data: dict) -> dict[tuple[str, str, str], str]:
    return {(c["strategy"], c["route"], c["scenario"]): c["verdict"] for c in data["cells"]}


def test_named_scenarios_give_the_same_verdicts_as_the_native_backend(target, tmp_path):
    named = ",".join(NAMED_SCENARIOS)
    native = verify({"backend": "native"}, tmp_path / "native", "--scenarios", named)
    assert native.returncode == 0, native.stdout + native.stderr
    external = verify(external_settings(target), tmp_path / "external", "--scenarios", named)
    assert external.returncode == 0, external.stdout + external.stderr
    on_native, on_external = results(tmp_path / "native"), results(tmp_path / "external")
    schema_layout = {name for name, spec in BUILTIN_SPECS.items() if "rls" not in name}
    expected = {cell: v for cell, v in matrix(on_native).items() if cell[0] in schema_layout}
    assert len(expected) == len(schema_layout) * 3 * len(NAMED_SCENARIOS)
    assert matrix(on_external) == expected
    # The rls layout is reported as not run, not as passed; nothing of the run is left behind.
    not_run = {item["what"] for item in on_external["not_run"]}
    assert {f"strategy {name}" for name in BUILTIN_SPECS if name not in schema_layout} <= not_run
    assert on_external["environment"]["backend"] == "external"
    assert schemas(target) == {"public"}


def test_missing_routes_are_reported_as_not_run(target, tmp_path):
    done = verify(external_settings(target, routes=("transaction",)), tmp_path, "--strategy", "translate_map_pinned",
                  "--scenarios", "fresh_session,after_commit")
    assert done.returncode == 0, done.stdout + done.stderr
    data = results(tmp_path)
    assert {c["route"] for c in data["cells"]} == {"transaction"}
    reasons = {item["what"]: item["reason"] for item in data["not_run"]}
    assert reasons["route direct"] == "no --direct-dsn given"
    assert reasons["route session"] == "no --session-dsn given"
    assert "Not run" in done.stdout and "route session" in done.stdout
    junit = (tmp_path / "latest" / "junit.xml").read_text()
    assert junit.count("<skipped") == len(data["not_run"])
    assert "Not run" in (tmp_path / "latest" / "index.html").read_text()


def test_a_database_with_someone_elses_schemas_is_refused_unless_told_otherwise(target, tmp_path):
    with psycopg.connect(**conninfo(target.superuser_url)) as conn:
        conn.execute("CREATE SCHEMA customer_data")
        conn.execute("CREATE TABLE customer_data.invoices (id int PRIMARY KEY)")
        conn.execute("INSERT INTO customer_data.invoices VALUES (1), (2)")
    try:
        with pytest.raises(SetupError) as caught:
            start_stack(resolve_config(external_settings(target), cwd=tmp_path))
        message = str(caught.value)
        assert "customer_data" in message and "--i-own-this-database" in message
        assert schemas(target) == {"public", "customer_data"}

        config = resolve_config(external_settings(target, i_own_this_database=True), cwd=tmp_path)
        with start_stack(config) as stack:
            tenancy = Tenancy(stack, DEFAULT_TENANTS)
            tenancy.provision()
            created = schemas(target) - {"public", "customer_data"}
            assert created == {stack.tenant_name(t) for t in DEFAULT_TENANTS}
            assert all(name.startswith(stack.tenant_prefix) for name in created)
            tenancy.close()
        assert schemas(target) == {"public", "customer_data"}
        with psycopg.connect(**conninfo(target.superuser_url)) as conn:
            assert conn.execute("SELECT count(*) FROM customer_data.invoices").fetchone() == (2,)
    finally:
        with psycopg.connect(**conninfo(target.superuser_url)) as conn:
            conn.execute("DROP SCHEMA customer_data CASCADE")


def test_the_leftovers_of_a_killed_run_are_dropped_by_the_next_and_nothing_else(target, tmp_path):
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from harness.config import resolve_config
        from harness.stack import start_stack
        from harness.tenancy.provisioning import Tenancy
        stack = start_stack(resolve_config({external_settings(target)!r}))
        Tenancy(stack, ["acme", "globex"]).provision()
        print("provisioned", flush=True)
        time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "provisioned"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    left = schemas(target) - {"public"}
    assert len(left) == 2, left

    # A look-alike without the harness's comment, a forged comment, and a live run's schemas survive.
    with psycopg.connect(**conninfo(target.superuser_url)) as conn:
        conn.execute("CREATE SCHEMA th_abcdef_lookalike")
        conn.execute("CREATE SCHEMA th_fedcba_forged")
        conn.execute(f"COMMENT ON SCHEMA th_fedcba_forged IS '{COMMENT_PREFIX}not-a-run owner x:1 started now'")
    live = start_stack(resolve_config(external_settings(target, i_own_this_database=True), cwd=tmp_path))
    try:
        assert live.timings.get("abandoned_schemas_removed") == 2.0
        assert not left & schemas(target), "the killed run's schemas were not dropped"
        live_tenancy = Tenancy(live, ["acme", "globex"])
        live_tenancy.provision()
        with start_stack(resolve_config(external_settings(target, i_own_this_database=True), cwd=tmp_path)) as nxt:
            assert "abandoned_schemas_removed" not in nxt.timings
        assert {"th_abcdef_lookalike", "th_fedcba_forged", live.tenant_name("acme")} <= schemas(target)
        live_tenancy.close()
    finally:
        live.close()
        with psycopg.connect(**conninfo(target.superuser_url)) as conn:
            conn.execute("DROP SCHEMA th_abcdef_lookalike")
            conn.execute("DROP SCHEMA th_fedcba_forged")
    assert schemas(target) == {"public"}


def test_tenant_schemas_carry_the_run_prefix_and_stay_within_63_bytes(target, tmp_path):
    with start_stack(resolve_config(external_settings(target), cwd=tmp_path)) as stack:
        tenancy = Tenancy(stack, DEFAULT_TENANTS)
        assert all(t.startswith(stack.tenant_prefix) for t in tenancy.tenants + tenancy.hostile)
        assert all(len(t.encode("utf-8")) <= 63 for t in tenancy.hostile)
        assert len(set(tenancy.hostile)) == len(tenancy.hostile)
        assert not tenancy.decoys, "the external backend must not write to public"
        with psycopg.connect(**conninfo(target.superuser_url)) as conn:
            assert harness_schemas(conn) == []
        tenancy.close()


@pytest.mark.parametrize("settings, message", [
    ({"backend": "external", "direct_dsn": "postgresql://app@127.0.0.1:1/postgres"}, "--superuser-dsn"),
    ({"backend": "external", "superuser_dsn": "postgresql://harness@127.0.0.1:1/postgres"}, "at least one route"),
    ({"backend": "external", "superuser_dsn": "postgresql://harness@127.0.0.1:1/postgres",
      "direct_dsn": "postgresql://app@127.0.0.1:1/postgres", "session_dsn": "postgresql://other@127.0.0.1:2/postgres"},
     "one login role"),
    ({"backend": "external", "superuser_dsn": "postgresql://harness@127.0.0.1:1/other",
      "direct_dsn": "postgresql://app@127.0.0.1:1/postgres"}, "one database"),
    ({"backend": "external", "superuser_dsn": "mysql://harness@127.0.0.1:1/postgres",
      "direct_dsn": "postgresql://app@127.0.0.1:1/postgres"}, "not a PostgreSQL URL"),
])
def test_bad_external_settings_are_clear_errors(settings, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        start_stack(resolve_config(settings, cwd=tmp_path))


def test_a_route_that_does_not_answer_is_a_clear_error_and_nothing_is_left(target, tmp_path):
    settings = external_settings(target, routes=("direct",))
    settings["session_dsn"] = dsn(target.url("direct").set(port=1))
    with pytest.raises(SetupError, match="Route session: could not connect"):
        start_stack(resolve_config(settings, cwd=tmp_path))
    assert schemas(target) == {"public"}


def test_in_pytest_a_route_without_a_dsn_is_skipped_as_not_run(target, tmp_path):
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        from harness.report.explain import explain
        from harness.tenancy.strategy import load_strategy

        def test_fresh_session(run_scenario, route):
            result = run_scenario(load_strategy("translate_map_pinned"), route, "fresh_session")
            assert result.verdict.value == "pass", explain(result)
    """))
    env = {**os.environ, **{f"HARNESS_{k.upper()}": v for k, v in external_settings(target, routes=("direct",)).items()}}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout, done.stdout
    assert "not run: route session: no --session-dsn given" in done.stdout
    assert schemas(target) == {"public"}
