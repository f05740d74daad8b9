"""Deployments measured, not assumed: every built-in x route x named scenario on bookworm, trixie and sid.

One `harness verify --deployments bookworm,trixie,sid` run: every cell must measure the verdict the
expectation table requires on its own deployment (both directions, on every deployment), and the cells
whose verdict differs between deployments must be exactly the ones whose reason is a deployment fact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.checks.verdict import Verdict
from harness.config import resolve_config, without_deployment_settings
from harness.deployments import DEPLOYMENTS
from harness.pytest_plugin import provisioned
from harness.stack import start_stack
from harness.tenancy.strategy import BUILTINS, load_strategy
from harness.workload.named import NAMED_SCENARIOS
from harness.workload.scenarios import CellContext, run_scenario

ROOT = Path(__file__).resolve().parents[1]
# PgBouncer deployments: the other poolers are compared native = docker (tests/test_docker_stack.py) and
# their verdicts tested in tests/test_pooler_stacks.py
NAMES = [name for name, d in DEPLOYMENTS.items() if d.pooler == "pgbouncer"]


def _verdicts(strategy: str, routes: tuple[str, ...], scenarios, by_deployment: dict[str, str]):
    return {(strategy, route, scenario): by_deployment for route in routes for scenario in scenarios}


#: the cells whose verdict a deployment decides (issue 12's table, measured): bookworm, trixie, sid
EXPECTED_DIFFERENCES = {
    # the search_path a connect event SET follows its client from server to server only where PostgreSQL 18
    # reports it and PgBouncer tracks it
    **_verdicts("connect_event_search_path", ("transaction",), NAMED_SCENARIOS,
                {"bookworm": "fail", "trixie": "fail", "sid": "pass"}),
    # a NullPool layer's connect-event SET stays on the server for the next client in transaction mode, unless
    # PgBouncer tracks search_path (PostgreSQL 18); only pool_state of the named scenarios probes the servers
    ("search_path_per_connection", "transaction", "pool_state"): {"bookworm": "fail", "trixie": "fail", "sid": "pass"},
    # PgBouncer 1.18 refuses options; 1.24 refuses search_path in options unless it tracks it; 1.26 tracks it
    **_verdicts("startup_options_search_path", ("session", "transaction"), NAMED_SCENARIOS,
                {"bookworm": "cannot_run", "trixie": "cannot_run", "sid": "pass"}),
    # ... but PgBouncer compares tracked values ignoring case: the quoted option "acme" equals "Acme"
    ("startup_options_search_path", "transaction", "simultaneous_tenants"):
        {"bookworm": "cannot_run", "trixie": "cannot_run", "sid": "fail"},
    # protocol-level prepared statements across servers: errors on 1.18 (the layer does not work behind it),
    # routed by 1.21 and later
    **_verdicts("translate_map_prepared", ("transaction",), ("after_commit", "simultaneous_tenants"),
                {"bookworm": "cannot_run", "trixie": "pass", "sid": "pass"}),
}


def test_the_deployments_differ_exactly_where_a_deployment_fact_decides(tmp_path):
    env = without_deployment_settings(os.environ)
    done = subprocess.run(
        [sys.executable, "-m", "harness", "verify", "--deployments", ",".join(NAMES), "--backend", "native",
         "--report-dir", str(tmp_path), "--scenarios", ",".join(NAMED_SCENARIOS), "--seed", "1"],
        capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)
    # exit 0: every cell measured what its deployment requires, in both directions
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for cell in results["cells"]:
        cells.setdefault((cell["strategy"], cell["route"], cell["scenario"]), {})[cell["deployment"]] = cell["verdict"]
    assert len(cells) == len(BUILTINS) * 3 * len(NAMED_SCENARIOS)
    assert all(set(by) == set(NAMES) for by in cells.values())
    # cell by cell: the same verdict on every deployment, but for the expected differences
    differing = {key: by for key, by in cells.items() if len(set(by.values())) > 1}
    assert differing == EXPECTED_DIFFERENCES
    # the report's own table lists the same cells, each with every deployment's reason
    listed = {(d["strategy"], d["route"], d["scenario"]) for d in results["differences"]}
    assert listed == set(EXPECTED_DIFFERENCES)
    environments = results["environment"]["deployments"]
    assert {name: env["postgresql"].split(".")[0] for name, env in environments.items()} == \
        {name: DEPLOYMENTS[name].postgres for name in NAMES}
    html = (tmp_path / "latest" / "index.html").read_text()
    assert "differ between deployments" in html


@pytest.mark.parametrize("tracking", [False, True], ids=["trixie", "trixie+track_extra_parameters"])
def test_tracking_search_path_on_trixie_turns_refused_startup_options_into_what_is_measured(tmp_path, tracking):
    """PgBouncer 1.24 refuses search_path in the startup options unless it tracks it; tracking it on
    PostgreSQL 17, which does not report search_path, PgBouncer takes the option and never applies it."""
    config = resolve_config({"deployment": "trixie", "backend": "native",
                             "pgbouncer_set": "track_extra_parameters=search_path" if tracking else None},
                            env={}, cwd=tmp_path)
    spec = load_strategy("startup_options_search_path")
    with start_stack(config) as stack, provisioned(stack, config) as tenancy:
        assert ("search_path" in stack.facts.tracked) == tracking
        ctx = CellContext(stack, tenancy, config, seed=1, gate=False)
        for route in ("session", "transaction"):
            result = run_scenario(ctx, spec, route, "after_commit")
            assert result.as_required, (route, result.verdict, result.reason, result.required)
            if tracking:
                assert result.verdict is Verdict.FAIL and result.required.when == "pgbouncer_tracks_search_path"
                assert "before 18" in result.required.reason
                assert {f.kind for f in result.findings} & {"cross_tenant_read", "context_lost"}
            else:
                assert result.verdict is Verdict.CANNOT_RUN and not result.required.when
                assert "unsupported startup parameter" in result.reason
