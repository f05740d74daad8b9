"""The report of a ``--deployments`` run, from canned cells: the verdicts that differ between deployments
(computed, in results.json, at the top of the page), each deployment's environment, junit test cases per
deployment, and shards of such a run merging back into it."""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path

import pytest

from harness.config import resolve_config
from harness.deployments import CONDITIONS
from harness.errors import UsageError
from harness.report.differences import Measured, deployment_differences, differences_json
from harness.report.merge import Shard, merge_results
from harness.report.results import results_json
from harness.report.writer import write_report, write_report_folder
from harness.verify import VerifyRun
from harness.workload.expectations import Expectation

from test_report import cell

DEPLOYMENTS = ["bookworm", "trixie", "sid"]
ROUTES = ["direct", "transaction"]
SCENARIOS = ["after_commit", "raw_text"]
TURNED = "search_path_tracked"  # the condition that turns the expected verdict on sid


def on(deployment: str | None, strategy: str, route: str, scenario: str, leak: bool, when: str = ""):
    result = cell(strategy, route, scenario, leak, "fail" if leak else "pass")
    result.deployment = deployment
    if when:
        result.required = Expectation(result.required.verdict, "the deployment decides", when=when)
    return result


def matrix_cells() -> list:
    """leaky leaks everywhere and sound nowhere; options leaks on transaction x raw_text except on sid."""
    cells = []
    for deployment in DEPLOYMENTS:
        for strategy in ("leaky", "options", "sound"):
            for route in ROUTES:
                for scenario in SCENARIOS:
                    turned = strategy == "options" and (route, scenario) == ("transaction", "raw_text")
                    leak = strategy == "leaky" or (turned and deployment != "sid")
                    cells.append(on(deployment, strategy, route, scenario, leak,
                                    TURNED if turned and deployment == "sid" else ""))
    return cells


def stack_environment(deployment: str) -> dict:
    postgres, pgbouncer = {"bookworm": ("15.14", "1.18.0"), "trixie": ("17.6", "1.24.1"),
                           "sid": ("18.1", "1.26.1")}[deployment]
    tracked = "intervalstyle, search_path" if deployment == "sid" else "intervalstyle"
    return {"postgresql": postgres, "pooler": f"PgBouncer {pgbouncer}", "backend": "native", "deployment": deployment,
            "deployment_facts": f"PostgreSQL {postgres.split('.')[0]}, PgBouncer {pgbouncer}, "
                                f"track_extra_parameters={tracked}",
            "profile": "ci", "seed": "42",
            "pooler_settings": {"transaction": {"track_extra_parameters": tracked,
                                                   "max_prepared_statements": "200"}}}


def matrix_run(tmp_path: Path, cells: list | None = None, *, shard: tuple[int, int] | None = None) -> VerifyRun:
    """A run of DEPLOYMENTS (or its shard K of N, every N-th cell); its environment as `harness verify` writes
    it: the first deployment's at the top, each deployment's own under ``deployments``."""
    config = resolve_config({"report_dir": tmp_path, "routes": ",".join(ROUTES), "scenarios": ",".join(SCENARIOS)},
                            env={}, cwd=tmp_path)
    cells = matrix_cells() if cells is None else cells
    if shard is not None:
        cells = cells[shard[0] - 1::shard[1]]
    drawn = [d for d in DEPLOYMENTS if any(c.deployment == d for c in cells)]
    stacks = {d: stack_environment(d) for d in drawn}
    index = shard[0] if shard else 0
    run = VerifyRun(run_id=f"20260101-00000{index}-matrix", started=dt.datetime(2026, 1, 1, 0, 0, index,
                                                                                tzinfo=dt.timezone.utc),
                    config=config, strategies=["leaky", "options", "sound"], builtin_self_check=True, seed=42,
                    cells=cells, routes=list(ROUTES), seconds=3.0,
                    environment={**stacks[drawn[0]], "jobs": "2", "deployments": stacks},
                    deployments=list(DEPLOYMENTS))
    run.plan = "d3b1" * 16
    run.shard = None if shard is None else {"index": shard[0], "count": shard[1]}
    return run


# The differences, a pure function of the cells.

def test_a_run_without_deployments_has_no_differences():
    cells = [on(None, "options", "direct", "raw_text", leak) for leak in (True, False)]
    assert deployment_differences(cells) == []


def test_the_same_verdict_on_every_deployment_is_no_difference():
    cells = [on(d, "leaky", "direct", "raw_text", True) for d in DEPLOYMENTS]
    assert deployment_differences(cells) == []


def test_a_cell_measured_on_one_deployment_only_is_compared_with_nothing():
    cells = [on("bookworm", "options", "direct", "raw_text", True), on("sid", "sound", "direct", "raw_text", False)]
    assert deployment_differences(cells) == []


def test_differing_verdicts_make_one_row_with_each_deployments_verdict_reason_and_condition():
    cells = matrix_cells()
    (difference,) = deployment_differences(cells)
    assert (difference.strategy, difference.route, difference.scenario) == ("options", "transaction", "raw_text")
    assert [(m.deployment, m.verdict, m.when) for m in difference.measured] == [
        ("bookworm", "fail", ""), ("trixie", "fail", ""), ("sid", "pass", TURNED)]
    by = {c.deployment: c for c in cells if (c.strategy, c.route, c.scenario) == ("options", "transaction", "raw_text")}
    assert [m.reason for m in difference.measured] == [by[d].reason for d in DEPLOYMENTS]
    assert by["bookworm"].reason != by["sid"].reason
    assert [m.condition for m in difference.measured] == ["", "", CONDITIONS[TURNED].means]


def test_results_json_cells_give_the_same_differences(tmp_path):
    run = matrix_run(tmp_path)
    assert differences_json(results_json(run)["cells"]) == [d.as_json() for d in deployment_differences(run.cells)]
    assert Measured("sid", "pass", "r", "no_such_condition").condition == ""


# results.json, the page and junit.xml.

def test_results_json_carries_the_deployments_and_round_trips(tmp_path):
    run = matrix_run(tmp_path)
    folder = write_report(run, tmp_path)
    data = json.loads((folder / "results.json").read_text())
    assert data["deployments"] == DEPLOYMENTS
    assert [c["deployment"] for c in data["cells"]] == [c.deployment for c in run.cells]
    assert len({c["id"] for c in data["cells"]}) == len(data["cells"]) == 36
    (difference,) = data["differences"]
    assert [m["deployment"] for m in difference["deployments"]] == DEPLOYMENTS
    sid = next(c for c in run.cells if (c.deployment, c.strategy, c.route, c.scenario) ==
               ("sid", "options", "transaction", "raw_text"))
    assert difference["deployments"][2] == {"deployment": "sid", "verdict": "pass", "reason": sid.reason,
                                            "when": TURNED, "condition": CONDITIONS[TURNED].means}
    again = write_report_folder(data, tmp_path / "again")
    assert (again / "index.html").read_text() == (folder / "index.html").read_text()


def test_a_run_without_deployments_writes_nulls_and_empty_lists(tmp_path):
    run = matrix_run(tmp_path, [on("bookworm", "sound", "direct", "raw_text", False)])
    run.cells[0].deployment, run.deployments, run.environment = None, [], {"profile": "ci"}
    data = results_json(run)
    assert data["deployments"] == [] and data["differences"] == []
    assert data["cells"][0]["deployment"] is None and data["cells"][0]["id"] == "cell-sound--direct--raw_text"


def text(markup: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", markup))).strip()


def table(page: str, marker: str) -> list[list[str]]:
    """The rows of the table that starts at ``marker``, each as its cells' text (a settings table inside
    a cell left out)."""
    part = re.sub(r'<table class="settings".*?</table>', "", page[page.index(marker):], flags=re.S)
    part = part[:part.index("</table>")]
    return [[text(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", part, re.S)]


def test_the_page_starts_with_the_verdicts_that_differ(tmp_path):
    run = matrix_run(tmp_path)
    html = (write_report(run, tmp_path) / "index.html").read_text()
    assert html.index('id="differences"') < html.index('id="matrix"')
    rows = table(html, '<table class="differences">')
    assert rows[0] == ["strategy", "route", "scenario", *DEPLOYMENTS]
    assert len(rows) == 2
    by = {c.deployment: c for c in run.cells if (c.strategy, c.route, c.scenario) == ("options", "transaction", "raw_text")}
    row = rows[1]
    assert row[:3] == ["options", "transaction", "raw_text"]
    assert row[3] == text(f"fail {by['bookworm'].reason}") and row[4] == text(f"fail {by['trixie'].reason}")
    assert row[5] == text(f"pass {by['sid'].reason} Deployment condition ({TURNED}): {CONDITIONS[TURNED].means}")
    # Each verdict links to the evidence of its own deployment's cell.
    assert '<a href="#cell-sid--options--transaction--raw_text">pass</a>' in html
    assert '<section id="cell-sid--options--transaction--raw_text" class="cell">' in html


def test_when_nothing_differs_one_sentence_says_so(tmp_path):
    cells = [c for c in matrix_cells() if c.strategy != "options"]
    html = (write_report(matrix_run(tmp_path, cells), tmp_path) / "index.html").read_text()
    assert '<table class="differences">' not in html
    assert "Every cell measured the same verdict on every deployment (bookworm, trixie, sid)." in html


def test_every_cell_shows_its_deployment(tmp_path):
    html = (write_report(matrix_run(tmp_path), tmp_path) / "index.html").read_text()
    evidence = html[html.index('id="cells"'):html.index('id="environment"')]
    assert re.findall(r'<h3 id="cells-(\w+)">deployment \1</h3>', evidence) == DEPLOYMENTS
    summaries = re.findall(r"<summary>.*?</summary>", evidence, re.S)
    assert len(summaries) == 36
    assert all(re.search(r"× (bookworm|trixie|sid) ", text(s) + " ") for s in summaries)


def test_the_environment_has_a_row_per_deployment(tmp_path):
    html = (write_report(matrix_run(tmp_path), tmp_path) / "index.html").read_text()
    rows = table(html, '<table class="deployments" id="environment-deployments">')
    assert [r[:4] for r in rows[1:]] == [["bookworm", "15.14", "PgBouncer 1.18.0", "native"], ["trixie", "17.6", "PgBouncer 1.24.1", "native"],
                                         ["sid", "18.1", "PgBouncer 1.26.1", "native"]]
    assert rows[3][4] == "PostgreSQL 18, PgBouncer 1.26.1, track_extra_parameters=intervalstyle, search_path"
    assert 'id="env-sid-pooler_settings"' in html
    assert "track_extra_parameters = intervalstyle, search_path" in html
    # The shared table keeps what every deployment ran with, not the first deployment's versions.
    shared = {r[0]: r[1] for r in table(html, '<table><tr><th>profile</th>')}
    assert shared == {"profile": "ci", "seed": "42", "jobs": "2"}


def test_junit_has_a_distinct_test_case_per_deployment(tmp_path):
    root = ET.parse(write_report(matrix_run(tmp_path), tmp_path) / "junit.xml").getroot()
    cases = [(c.get("classname"), c.get("name")) for c in root.findall("testcase")]
    assert len(cases) == len(set(cases)) == 36
    assert ("bookworm.options.transaction", "raw_text") in cases and ("sid.options.transaction", "raw_text") in cases


# Shards of a run with deployments.

def test_shards_of_a_run_with_deployments_merge_into_the_whole_run(tmp_path):
    whole = results_json(matrix_run(tmp_path))
    # 36 cells in 24 shards: shards 1 to 12 draw a bookworm and a sid cell, shards 13 to 24 one trixie cell,
    # so no shard holds every deployment and the shards' top levels are two deployments'.
    parts = [Shard(f"shard-{k}", results_json(matrix_run(tmp_path, shard=(k, 24)))) for k in range(1, 25)]
    assert {tuple(p.results["environment"]["deployments"]) for p in parts} == {("bookworm", "sid"), ("trixie",)}
    merged = merge_results(parts)
    assert merged["cells"] == whole["cells"]
    for key in ("deployments", "differences", "environment", "verdict"):
        assert merged[key] == whole[key], key


def test_shards_that_ran_one_deployment_on_different_versions_are_refused(tmp_path):
    parts = [Shard(f"shard-{k}", results_json(matrix_run(tmp_path, shard=(k, 3)))) for k in (1, 2, 3)]
    parts[2].results["environment"]["deployments"]["trixie"]["postgresql"] = "17.5"
    with pytest.raises(UsageError) as caught:
        merge_results(parts)
    assert "the environment's postgresql on trixie" in caught.value.problem
