"""The scan on a small multi-module application (tests/fixtures/scan_project): findings a team can act on.

Every call-site finding cites the definition actually called (the module's own first, then what it imports,
through a package's re-exports, ``self`` and a local made by a constructor), never a same-named one
elsewhere; raw SQL after a session-level SET is reported with the line of that SET, whether the SQL is
written in place, kept in a variable, a module or class constant, a dict, an f-string or handed to a helper
that runs it; scripts, tests and migrations are listed and counted but do not gate unless asked.

The expected findings are written in the fixture itself, as ``# expect: RULE [@ANCHOR]`` on the line of
each finding, ``# anchor: NAME`` marking the definition or SET it cites.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.scan import main, scan_paths
from harness.scan.sarif import sarif_log
from scan_marks import Mark, expected_findings, found_findings

PROJECT = Path(__file__).parent / "fixtures" / "scan_project"


def _found(root: Path) -> set[Mark]:
    return found_findings(root, PROJECT)


def test_every_finding_is_the_one_written_in_the_fixture_and_cites_what_is_really_called() -> None:
    expected = expected_findings(PROJECT)
    assert len(expected) > 20 and len({cites for *_, cites in expected if cites}) >= 7  # the marks were read
    assert _found(PROJECT) == expected


def test_scanning_the_package_alone_resolves_its_absolute_imports_the_same_way() -> None:
    """Scanning acme/ (not its parent): ``from acme.db import ...`` still names acme/db/__init__.py."""
    whole = {finding for finding in _found(PROJECT) if finding[0].startswith("acme/")}
    assert _found(PROJECT / "acme") == whole


def test_same_named_helpers_are_told_apart() -> None:
    """Three _configure_session (two bind, one does not, one is a method of a class that does not) and two
    main(): a call cites its own, and a call of one that binds nothing is no finding."""
    findings = scan_paths([PROJECT]).findings
    calls = {(Path(f.path).name, f.line): Path((f.cites or "").rpartition(":")[0]).name
             for f in findings if f.rule == "search-path-function-call"}
    assert calls[("billing.py", 13)] == "billing.py"  # its own _configure_session, not nightly's or reports'
    assert calls[("billing.py", 19)] == "reports.py"  # service = ReportService(conn); service._configure_session
    assert ("nightly.py", 21) not in calls  # nightly's own _configure_session sets a timeout only
    assert not any(name == "reindex.py" for name, _ in calls)  # its own main(), not acme/cli.py's
    assert calls[("maintenance.py", 6)] == "cli.py"  # from acme.cli import main
    assert all(f.line not in (20, 21) for f in findings if Path(f.path).name == "billing.py"
               and f.rule == "search-path-function-call")  # AuditService._configure_session binds nothing


def test_sql_after_a_session_set_names_that_set() -> None:
    findings = [f for f in scan_paths([PROJECT]).findings if f.rule == "unqualified-after-set-search-path"]
    late = next(f for f in findings if Path(f.path).name == "nightly.py" and f.line == 10)
    assert "relies on the SET search_path at " in late.message
    assert late.message.count(late.cites or "?") == 1 and late.cites.endswith("acme/db/session.py:7")
    before = next(f for f in scan_paths([PROJECT]).findings if Path(f.path).name == "nightly.py" and f.line == 22)
    assert before.rule == "unqualified-tenant-table" and before.cites is None  # run before the SET


def test_scripts_tests_and_migrations_are_listed_and_counted_but_gate_only_when_asked(capsys) -> None:
    result = scan_paths([PROJECT])
    assert {f.tag for f in result.findings if not f.gating} == {"scripts", "tests", "migrations"}
    assert all(f.gating for f in result.findings if f.tag == "app")
    summary = result.summary()
    assert summary["tags"]["tests"] == {"findings": 2, "gating": 0}
    assert summary["rules"]["search-path-function-call"]["findings"] == 7
    assert sum(c["findings"] for c in summary["files"].values()) == len(result.findings)
    assert list(summary["files"])[0].endswith("acme/jobs/nightly.py")  # most findings first

    assert main([str(PROJECT), "--gate", "app,tests"]) == 1
    out = capsys.readouterr().out
    assert "by tag: app 22 (22 gating), migrations 2 (not gating), tests 2 (2 gating), scripts 1 (not gating)" in out
    assert main([str(PROJECT / "scripts" / "reindex.py")]) == 0


@pytest.mark.parametrize("rule", ["search-path-function-call", "unqualified-after-set-search-path"])
def test_sarif_carries_what_a_finding_cites_as_a_related_location(rule) -> None:
    scan = scan_paths([PROJECT]).as_json()
    log = sarif_log(json.loads(json.dumps(scan)))
    results = [r for r in log["runs"][0]["results"] if r["ruleId"] == rule]
    assert results and all(len(r["relatedLocations"]) == 1 for r in results)
    cited = results[0]["relatedLocations"][0]["physicalLocation"]["region"]["startLine"]
    first = next(f for f in scan["findings"] if f["rule"] == rule)
    assert str(cited) == first["cites"].rpartition(":")[2]
