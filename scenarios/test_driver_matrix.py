"""Drivers measured, not assumed: every built-in x route x named scenario on psycopg, psycopg2 and asyncpg.

One `harness verify --drivers psycopg2,asyncpg` run on the host's deployment (bookworm: PgBouncer 1.18;
psycopg 3 too with HARNESS_MATRIX_DRIVERS=all, measured: 1080 cells, exit 0): every cell must measure the verdict the expectation table requires for its driver (both
directions), the cells whose verdict differs between drivers must be exactly those whose reason is a fact
of the driver, and each cell's layer must really have used the driver it was given. Then asyncpg with its
statement cache, which does not work behind PgBouncer 1.18 in transaction mode, passes on sid (PgBouncer
1.26 routes prepared statements).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.config import without_deployment_settings
from harness.tenancy.strategy import BUILTIN_MODULES, BUILTINS
from harness.workload.named import NAMED_SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ("psycopg", "psycopg2", "asyncpg")
ASYNC_ONLY = BUILTIN_MODULES["harness.tenancy.strategies.asynchronous"]  # no psycopg2 form


def _verdicts(strategy: str, routes: tuple[str, ...], scenarios, by_driver: dict[str, str]):
    return {(strategy, route, scenario): by_driver for route in routes for scenario in scenarios}


#: the cells whose verdict the driver decides on bookworm (measured): psycopg2 never prepares; asyncpg prepares
#: every statement and reuses the cached ones, so a request's second transaction meets a statement prepared on
#: another server. (psycopg's own verdicts on bookworm are the deployment matrix's: scenarios/
#: test_deployment_matrix.py; measured here too when the test runs with HARNESS_MATRIX_DRIVERS=all.)
EXPECTED_DIFFERENCES = {
    **_verdicts("translate_map_prepared", ("transaction",),
                ("after_commit", "simultaneous_tenants", "after_rollback", "raw_text", "pool_state", "scheduler"),
                {"psycopg": "pass", "psycopg2": "pass", "asyncpg": "cannot_run"}),
}
# psycopg prepares at a statement's 5th execution: two of those programs meet one on another server
for _scenario in ("after_commit", "simultaneous_tenants"):
    EXPECTED_DIFFERENCES[("translate_map_prepared", "transaction", _scenario)] = {
        "psycopg": "cannot_run", "psycopg2": "pass", "asyncpg": "cannot_run"}
#: the drivers measured in CI: the two besides psycopg 3 (whose verdicts the deployment matrix measures)
MEASURED = DRIVERS if os.environ.get("HARNESS_MATRIX_DRIVERS") == "all" else ("psycopg2", "asyncpg")


def _expected() -> dict[tuple[str, str, str], dict[str, str]]:
    """The expected differences among the drivers measured."""
    found = {}
    for key, by in EXPECTED_DIFFERENCES.items():
        kept = {d: v for d, v in by.items() if d in MEASURED}
        if len(set(kept.values())) > 1:
            found[key] = kept
    return found


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = without_deployment_settings(os.environ)
    done = subprocess.run([sys.executable, "-m", "harness", "verify", "--backend", "native", "--report-dir",
                           str(tmp_path), "--scenarios", ",".join(NAMED_SCENARIOS), "--seed", "1", *args],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)
    results = tmp_path / "latest" / "results.json"
    assert results.is_file(), done.stdout[-4000:] + done.stderr[-4000:]
    return done, json.loads(results.read_text())


def test_the_drivers_differ_exactly_where_a_driver_fact_decides(tmp_path):
    done, results = _run(tmp_path, "--drivers", ",".join(MEASURED))
    # exit 0: every cell measured what its driver requires, in both directions
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for cell in results["cells"]:
        cells.setdefault((cell["strategy"], cell["route"], cell["scenario"]), {})[cell["driver"]] = cell["verdict"]
        # the layer really ran on the driver it was given (read from its engine, not from the URL)
        assert cell["driver_used"].split()[0].removesuffix("_async") == cell["driver"], cell["id"]
        assert cell["variant"] == cell["driver"]
    assert len(cells) == len(BUILTINS) * 3 * len(NAMED_SCENARIOS)
    for (strategy, _, _), by in cells.items():
        assert set(by) == (set(MEASURED) - {"psycopg2"} if strategy in ASYNC_ONLY else set(MEASURED)), strategy
    not_run = {item["what"] for item in results["not_run"]}
    assert {f"strategy {name} on driver psycopg2" for name in ASYNC_ONLY} <= not_run
    differing = {key: by for key, by in cells.items() if len(set(by.values())) > 1}
    assert differing == _expected()
    assert {(d["strategy"], d["route"], d["scenario"]) for d in results["differences"]} == set(_expected())
    for key in _expected():
        cell = next(c for c in results["cells"] if (c["strategy"], c["route"], c["scenario"]) == key
                    and c["driver"] == "asyncpg")
        assert "does not work behind this pooler" in cell["verdict_reason"], cell["verdict_reason"]
        assert "__asyncpg_stmt_" in cell["verdict_reason"], cell["verdict_reason"]
    assert results["drivers"] == list(MEASURED) and "asyncpg" in results["environment"]["drivers"]
    html = (tmp_path / "latest" / "index.html").read_text()
    assert "Verdicts that differ between drivers" in html


def test_asyncpgs_statement_cache_works_behind_a_pgbouncer_that_routes_prepared_statements(tmp_path):
    done, results = _run(tmp_path, "--deployment", "sid", "--driver", "asyncpg", "--strategy",
                         "translate_map_prepared", "--routes", "transaction")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert {c["verdict"] for c in results["cells"]} == {"pass"}
    assert all(c["driver_used"].startswith("asyncpg") for c in results["cells"])
