"""The report from canned cell results: files, results.json schema, junit, a self-contained page, trend."""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET

import pytest

from harness.checks import check_history, coverage, verdict
from harness.config import resolve_config
from harness.report import write_report
from harness.report.results import SCHEMA, VERSION
from harness.scan.scanner import ScanFinding
from harness.verify import VerifyRun
from harness.workload.cell import CellResult
from harness.workload.expectations import Expectation
from harness.workload.history import History, RowSeen, StepRecord


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
    result = CellResult(strategy, route, scenario, history, findings, cov, verdict(findings, cov), 0.5)
    result.required = Expectation(required, "because the table says so")
    return result


@pytest.fixture
def run(tmp_path):
    config = resolve_config({"report_dir": tmp_path}, env={}, cwd=tmp_path)
    cells = [cell("leaky", route, scenario, True, "fail") for route in ("direct", "transaction")
             for scenario in ("after_commit", "raw_text")]
    cells += [cell("sound", route, scenario, False, "pass") for route in ("direct", "transaction")
              for scenario in ("after_commit", "raw_text")]
    cells[-1].required = Expectation("fail", "a wrong expectation, to see a cell not as required")
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
    matrix_cells = re.findall(r'<td class="v [^"]*" data-cell="([^"]+)"><a href="#\1">', html)
    assert len(matrix_cells) == 8
    for cell_id in matrix_cells:
        assert f'<details id="{cell_id}"' in html
    assert html.count('class="timeline"') >= 4
    assert "FAIL: 1 of 8 cells differ from the expectation table" in html
    assert "app/db.py:7" in html


def test_trend_lists_earlier_runs(run, tmp_path):
    write_report(run, tmp_path)
    run.run_id = "20260102-000000-bcdefa"
    run.started = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    html = (write_report(run, tmp_path) / "index.html").read_text()
    assert 'id="trend"' in html
    assert "20260101-000000-abcdef" in html and "20260102-000000-bcdefa" in html
