"""Writes reports/<run-id>/{index.html,results.json,junit.xml} (and scan.sarif) and points reports/latest at it.

Everything here reads the results dict only (never a run object), so that
`harness verify` and `harness report merge` write the same folder from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from harness.checks.faults import FAULT_LEGEND
from harness.checks.history import STATE_KINDS
from harness.checks.verdict import Verdict
from harness.report.junit import junit_xml
from harness.report.migration import COLUMNS
from harness.report.results import axes, results_json
from harness.report.trend import trend
from harness.scan.sarif import write_sarif

#: environment entries that describe one deployment's stack; a run with deployments shows them per deployment
PER_DEPLOYMENT = ("deployment", "postgresql", "pooler", "postgres_image", "pooler_image", "backend",
                  "deployment_facts", "pooler_settings", "pooler_requested")

_ENV = Environment(loader=PackageLoader("harness.report", "templates"), autoescape=select_autoescape(["html", "j2"]))


def headline(results: dict[str, Any]) -> str:
    cells = results["cells"]
    off = [c for c in cells if not c["as_required"]]
    scan = results.get("scan") or {}
    findings = scan.get("findings", [])
    gating = sum(bool(f.get("gating", True)) for f in findings)
    tail = (f"; the static scan found {len(findings)} finding(s), {gating} gating" if findings else "")
    if results.get("complete") is False:
        return (f"INCOMPLETE: the run stopped after {len(cells)} cell(s), so it cannot pass; of those, "
                + _cells_sentence(results, cells, off) + tail)
    return ("PASS: " if results["verdict"] == Verdict.PASS else "FAIL: ") + _cells_sentence(results, cells, off) + tail


def _cells_sentence(results: dict[str, Any], cells: list, off: list) -> str:
    if results["builtin_self_check"]:
        if not off:
            return (f"all {len(cells)} cells measured the verdict the expectation table requires "
                    f"({sum(c['verdict'] == Verdict.FAIL for c in cells)} known leaks found, "
                    f"{sum(c['verdict'] == Verdict.PASS for c in cells)} sound cells passed)")
        return f"{len(off)} of {len(cells)} cells differ from the expectation table"
    if not off:
        return f"{', '.join(results['strategies'])} passed all {len(cells)} cells"
    return f"{len(off)} of {len(cells)} cells did not pass"


def route_letters(routes: tuple[str, ...]) -> dict[str, str]:
    """The shortest prefix that tells each route apart: direct/session/transaction become d/s/t.

    The grid shows one letter-sized mark per route inside each strategy x scenario cell, so
    the marks must stay short and still say which route they are without a hover."""
    letters: dict[str, str] = {}
    for route in routes:
        size = 1
        while any(route[:size] == other[:size] for other in routes if other != route) and size < len(route):
            size += 1
        letters[route] = route[:size]
    return letters


def shared_environment(results: dict[str, Any]) -> dict[str, Any]:
    """The environment entries every cell ran with: all of them, or in a run with deployments those that
    do not describe one deployment (the page shows each deployment's own in a table of their own)."""
    environment = results["environment"]
    if not results.get("deployments"):
        return environment
    return {key: value for key, value in environment.items() if key not in (*PER_DEPLOYMENT, "deployments")}


def render_html(results: dict[str, Any], history: list[dict[str, Any]]) -> str:
    plan = axes(results)
    cells = {((c.get("variant") or c.get("deployment")), c["strategy"], c["scenario"], c["route"]): c
             for c in results["cells"]}
    measured = {key[:2] for key in cells}
    return _ENV.get_template("report.html.j2").render(
        r=results, headline=headline(results), cells=cells, axes=plan, environment=shared_environment(results),
        deployment_environments=results["environment"].get("deployments") or {},
        differences=[(d, {m["deployment"]: m for m in d["deployments"]}) for d in results.get("differences", [])],
        # A grid row shows only the strategies the deployment measured: a strategy that did not run
        # on a stack (not_run) would otherwise be a row of empty marks.
        rows={d: [s for s in plan.strategies if (d, s) in measured] for d in plan.deployments},
        letters=route_letters(plan.routes), migration_columns=COLUMNS, trend=history,
        state_kinds=STATE_KINDS, fault_kinds=FAULT_LEGEND)


def write_partial_results(results: dict[str, Any], report_dir: Path) -> Path:
    """Rewrite <report_dir>/<run_id>/results.json while the run goes on (atomically: a reader never sees
    half a file); the full report replaces it at the end. Return the folder."""
    folder = report_dir / results["run_id"]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".results-{os.getpid()}.json"
    tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, folder / "results.json")
    return folder


def write_report_folder(results: dict[str, Any], report_dir: Path) -> Path:
    """Write <report_dir>/<run_id>/ from a results dict and point <report_dir>/latest at it; return the folder."""
    folder = report_dir / results["run_id"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str),
                                         encoding="utf-8")
    (folder / "junit.xml").write_bytes(junit_xml(results))
    scan = results.get("scan")
    if scan and scan.get("files"):  # a scan this run made (a merged report's scan.sarif stays in its shards')
        write_sarif(scan, folder / "scan.sarif")
    (folder / "index.html").write_text(render_html(results, trend(report_dir, results)), encoding="utf-8")
    latest = report_dir / "latest"
    tmp = report_dir / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(results["run_id"], target_is_directory=True)
    os.replace(tmp, latest)
    return folder


def write_report(run, report_dir: Path) -> Path:
    """Write the run's three files; return the folder."""
    return write_report_folder(results_json(run), report_dir)
