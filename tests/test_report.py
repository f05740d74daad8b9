"""The report from canned cell results: files, results.json schema, junit, a self-contained page, trend."""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET

import pytest

from harness.checks import Verdict, check_history, coverage, verdict
from harness.checks.history import History, RowSeen, StepRecord
from harness.config import resolve_config
from harness.report import write_report
from harness.report.migration import migration_rows
from harness.report.results import SCHEMA, VERSION, axes, results_json
from harness.report.writer import route_letters, write_report_folder
from harness.scan.scanner import ScanFinding
from harness.verify import VerifyRun
from harness.workload.cell import CellResult
from harness.workload.expectations import Expectation


def cell(strategy: str, route: str, scenario: str, leak: bool, required: str) -> CellResult:
    rows_b = (RowSeen("product", 1, "acme"),) if leak else (RowSeen("product", 1, "Acme"),)
    history = History(strategy=strategy, route=route, tenants=("acme", "Acme"), schemas=("acme", "Acme"), steps=[
        StepRecord(1, 0, 0, "acme", "open", style="control", pid=11),
        StepRecord(2, 0, 0, "acme", "orm_select_all", pid=11, search_path="acme, public",
                   rows=(RowSeen("product", 1, "acme"),)),
        StepRecord(3, 1, 0, "Acme", "open", style="control", pid=11),
        StepRecord(4, 1, 0, "Acme", "orm_select_all", pid=11, search_path="acme, public", rows=rows_b),
    ])
    findings = check_history(history)
    cov = coverage(history)
    judgement = verdict(findings, cov)
    result = CellResult(strategy, route, scenario, history, findings, cov, judgement.verdict, judgement.reason, 0.5)
    result.required = Expectation(Verdict(required), "because the table says so")
    return result


@pytest.fixture
def run(tmp_path):
    config = resolve_config({"report_dir": tmp_path, "routes": "direct,transaction",
                             "scenarios": "after_commit,raw_text"}, env={}, cwd=tmp_path)
    cells = [cell("leaky", route, scenario, True, "fail") for route in ("direct", "transaction")
             for scenario in ("after_commit", "raw_text")]
    cells += [cell("sound", route, scenario, False, "pass") for route in ("direct", "transaction")
              for scenario in ("after_commit", "raw_text")]
    cells[-1].required = Expectation(Verdict.FAIL, "a wrong expectation, to see a cell not as required")
    result = VerifyRun(run_id="20260101-000000-abcdef", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                       config=config, strategies=["leaky", "sound"], builtin_self_check=True, seed=42,
                       cells=cells, environment={"postgresql": "15", "profile": "ci"}, seconds=3.0)
    result.scan = [ScanFinding("app/db.py", 7, "set-search-path-sql", "SET search_path in SQL.", "SET search_path")]
    result.scan_paths = ["app"]
    return result


def test_writes_three_files_and_points_latest_at_them(run, tmp_path):
    folder = write_report(run, tmp_path)
    assert {p.name for p in folder.iterdir()} == {"index.html", "results.json", "junit.xml"}
    assert (tmp_path / "latest").resolve() == folder.resolve()


def test_results_json_follows_the_documented_schema(run, tmp_path):
    data = json.loads((write_report(run, tmp_path) / "results.json").read_text())
    assert (data["schema"], data["version"]) == (SCHEMA, VERSION)
    assert data["verdict"] == "fail" and data["exit_status"] == 1
    assert len(data["cells"]) == 8
    leaky = next(c for c in data["cells"] if c["strategy"] == "leaky")
    assert leaky["verdict"] == "fail" and leaky["as_required"]
    assert [f["kind"] for f in leaky["findings"]] == ["cross_tenant_read"]
    assert any(step["flagged"] for step in leaky["evidence"])
    assert sum(not c["as_required"] for c in data["cells"]) == 1
    assert data["scan"]["findings"][0]["line"] == 7
    assert {row["strategy"] for row in data["migration"]} == {"leaky", "sound"}
    sound = next(r for r in data["migration"] if r["strategy"] == "sound")
    assert sound["survives_commit"]["value"] == "yes" and sound["hostile_names"]["value"] == "?"


def test_junit_has_one_case_per_cell_and_fails_the_off_one(run, tmp_path):
    root = ET.parse(write_report(run, tmp_path) / "junit.xml").getroot()
    cases = root.findall("testcase")
    assert len(cases) == 8
    failed = [c for c in cases if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [("sound.transaction", "raw_text")]


def test_html_is_self_contained_and_links_every_matrix_cell(run, tmp_path):
    html = (write_report(run, tmp_path) / "index.html").read_text()
    assert "<script" not in html and not re.search(r"(src|href)=\"https?://", html)
    assert "@import" not in html and "url(http" not in html
    marks = re.findall(r'<a class="mark [^"]*" href="#([^"]+)" data-cell="\1"', html)
    assert len(marks) == 8
    for cell_id in marks:
        assert f'<section id="{cell_id}" class="cell">' in html
    assert html.count('class="timeline"') >= 4
    assert "FAIL: 1 of 8 cells differ from the expectation table" in html
    assert "app/db.py:7" in html


def grid(html: str) -> list[list[str]]:
    """The matrix as rows of cells' inner HTML: the header row, then one row per strategy."""
    table = html[html.index('<table class="matrix">'):]
    table = table[:table.index("</table>")]
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]


def test_the_matrix_is_a_grid_strategies_down_scenarios_across_one_mark_per_route(run, tmp_path):
    html = (write_report(run, tmp_path) / "index.html").read_text()
    rows = grid(html)
    assert [re.sub("<[^>]+>", "", h) for h in rows[0]] == ["strategy", "after_commit", "raw_text", "as required"]
    assert [r[0] for r in rows[1:]] == ["leaky", "sound"]
    sound_raw_text = rows[2][2]
    # direct passed; transaction measured pass where the (wrong) expectation wants fail: marked "!".
    assert re.findall(r'class="mark ([^"]*)"[^>]*>(\w)', sound_raw_text) == [
        ("pass", "d"), ("pass notreq", "t")]
    assert 'title="sound × transaction × raw_text: pass, required fail"' in sound_raw_text
    assert rows[1][-1] == "4/4" and rows[2][-1] == "3/4"
    # The legend names every route's letter and every kind of mark.
    legend = html[html.index('id="legend"'):html.index('<table class="matrix">')]
    for words in ("d</span> direct", "t</span> transaction", "pass", "fail", "inconclusive",
                  "not the verdict it had to measure", "not run"):
        assert words in legend


def test_a_route_a_strategy_lacks_keeps_its_place_as_a_not_run_mark(run, tmp_path):
    run.cells = [c for c in run.cells if not (c.strategy == "sound" and c.route == "direct")]
    rows = grid((write_report(run, tmp_path) / "index.html").read_text())
    assert re.findall(r'class="mark ([^"]*)"', rows[2][1]) == ["none", "pass"]


def test_cells_with_a_deployment_get_a_group_of_rows_each(run, tmp_path):
    results = results_json(run)
    cells = []
    for deployment in ("bookworm", "trixie", "sid"):
        for c in results["cells"]:
            cells.append({**c, "deployment": deployment, "id": f"{c['id']}-{deployment}"})
    results["cells"] = cells
    folder = write_report_folder(results, tmp_path)
    html = (folder / "index.html").read_text()
    rows = grid(html)
    assert [r[0] for r in rows[1:]] == ["deployment bookworm", "leaky", "sound", "deployment trixie", "leaky",
                                        "sound", "deployment sid", "leaky", "sound"]
    assert len(re.findall(r'<a class="mark ', html)) == 24
    assert '× raw_text × sid' in html


def test_failing_cells_and_cells_not_as_required_are_open_and_a_target_shows_any_cell(run, tmp_path):
    html = (write_report(run, tmp_path) / "index.html").read_text()
    sections = re.findall(r'<section id="([^"]+)" class="cell">\s*<details( open)?>', html)
    results = {c["id"]: c for c in results_json(run)["cells"]}
    assert len(sections) == 8
    for cell_id, opened in sections:
        c = results[cell_id]
        assert bool(opened) == (c["verdict"] == "fail" or not c["as_required"]), cell_id
    # The evidence is the details' sibling, shown when the details is open or the section is the target.
    assert "section.cell > details[open] + .evidence, section.cell:target > .evidence { display: block; }" in html


def test_the_page_is_rendered_from_results_json_alone(run, tmp_path):
    folder = write_report(run, tmp_path)
    data = json.loads((folder / "results.json").read_text())
    again = write_report_folder(data, tmp_path / "again")
    assert (again / "index.html").read_text() == (folder / "index.html").read_text()
    assert data["migration"] == migration_rows(data["cells"])


def test_trend_lists_earlier_runs(run, tmp_path):
    write_report(run, tmp_path)
    run.run_id = "20260102-000000-bcdefa"
    run.started = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    html = (write_report(run, tmp_path) / "index.html").read_text()
    assert 'id="trend"' in html
    assert "20260101-000000-abcdef" in html and "20260102-000000-bcdefa" in html


def test_trend_leaves_out_shards_of_a_run(run, tmp_path):
    run.shard = {"index": 1, "count": 3}
    write_report(run, tmp_path)
    run.run_id, run.shard = "20260102-000000-bcdefa", None
    run.started = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    html = (write_report(run, tmp_path) / "index.html").read_text()
    assert 'id="trend"' not in html


def test_route_letters_are_the_shortest_prefix_that_tells_routes_apart():
    assert route_letters(("direct", "session", "transaction")) == {"direct": "d", "session": "s", "transaction": "t"}
    assert route_letters(("session", "sessions2", "direct")) == {"session": "session", "sessions2": "sessions",
                                                                 "direct": "d"}


def test_axes_follow_the_plan_then_the_cells():
    results = {"strategies": ["b", "a"], "routes": ["transaction", "direct"], "scenarios": ["y", "x"],
               "cells": [{"strategy": "a", "route": "direct", "scenario": "z"}]}
    plan = axes(results)
    assert (plan.deployments, plan.strategies, plan.routes, plan.scenarios) == (
        (None,), ("b", "a"), ("transaction", "direct"), ("y", "x", "z"))
    assert plan.position({"strategy": "a", "route": "direct", "scenario": "x"}) == (0, 1, 1, 1)
