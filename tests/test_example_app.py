"""examples/shop end to end, as a team would run it from its own project's root.

The shop has one deliberately unqualified report query in a code path given to
the harness as an action. The scan must point at it (file:line, table), verify
must catch the action reading another tenant's rows with a minimal
counterexample that contains it, and fixing the query must make both pass.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from example_projects import copy_example, run_harness

UNQUALIFIED = 'text("SELECT coalesce(sum(total), 0) FROM invoice")'
FIXED = "select(func.coalesce(func.sum(Invoice.total), 0))"


def _harness(project: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_harness(project, *args, timeout=timeout)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return copy_example("shop", tmp_path)


def _fix(project: Path) -> None:
    reports = project / "shop" / "reports.py"
    source = reports.read_text()
    assert UNQUALIFIED in source
    source = source.replace(UNQUALIFIED, FIXED).replace("from shop.models import Customer\n",
                                                        "from shop.models import Customer, Invoice\n")
    reports.write_text(source)


def _verify(project: Path, report_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = _harness(project, "verify", "--routes", "direct,transaction", "--scenarios", "generated",
                      "--profile", "dev", "--seed", "7", "--jobs", "1", "--report-dir", str(report_dir))
    results = report_dir / "latest" / "results.json"
    assert results.is_file(), result.stdout + result.stderr
    return result, json.loads(results.read_text())


def _scan(project: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = _harness(project, "scan", "shop", "--models", "shop.models:Base", "--json", timeout=120)
    return result, json.loads(result.stdout)


def test_the_scan_points_at_the_query_and_passes_once_it_is_fixed(shop):
    result, data = _scan(shop)
    assert result.returncode == 1, result.stdout + result.stderr
    [finding] = data["findings"]
    source = (shop / "shop" / "reports.py").read_text().splitlines()
    line = next(number for number, text in enumerate(source, 1) if UNQUALIFIED in text)
    assert (finding["path"], finding["line"], finding["table"]) == ("shop/reports.py", line, "invoice"), finding
    assert finding["gating"] and finding["tag"] == "app"
    _fix(shop)
    result, data = _scan(shop)
    assert result.returncode == 0 and not data["findings"], result.stdout + result.stderr


def test_the_leak_is_caught_with_the_action_in_a_minimal_counterexample_and_the_fix_passes(shop, tmp_path):
    result, data = _verify(shop, tmp_path / "before")
    assert result.returncode == 1, result.stdout + result.stderr
    assert {c["verdict"] for c in data["cells"]} == {"fail"}
    for cell in data["cells"]:
        leaks = [f for f in cell["findings"] if f["gating"] and f["kind"] == "cross_tenant_read"]
        assert leaks and all("action:monthly_total" in f["explanation"] for f in leaks), cell
        program = " ".join(cell["counterexample"]["program"])
        assert "action:monthly_total" in program, program
        steps = [s for line in cell["counterexample"]["program"] if line.startswith("client ")
                 for s in line.split(": ", 1)[1].split(", ")]
        assert steps == ["open", "action:monthly_total", "end_request"], program  # nothing else is needed
    assert data["environment"]["actions"] == "shop.reports:monthly_total"

    _fix(shop)
    result, data = _verify(shop, tmp_path / "after")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {c["verdict"] for c in data["cells"]} == {"pass"}
