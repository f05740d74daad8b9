"""examples/clinic end to end on every driver: a realistic app as a team would run the harness on it.

The clinic (FastAPI-style session dependency, psycopg2 by default, enums its migration creates, JSON
columns, soft delete, a shared plan table) has a nightly job whose raw ``text()`` query is not rewritten
by ``schema_translate_map``. On each driver, verify must catch it as a cross-tenant read with a minimal
counterexample of one request holding the job step, on the driver asked for; with the example's fixed
job (clinic/jobs_fixed.py: the query through the mapped classes) in its place, every cell passes.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from example_projects import copy_example, run_harness

JOB = "action:send_payment_reminders"
LEAKY = "OVERDUE = text(\n"  # the job's raw SQL, which schema_translate_map does not rewrite


def _harness(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`harness ...` from the example's root; its DATABASE_URL comes from its [tool.harness.env]."""
    return run_harness(project, *args, timeout=timeout, drop=("DATABASE_URL",))


@pytest.fixture
def clinic(tmp_path: Path) -> Path:
    return copy_example("clinic", tmp_path)


def _fix(project: Path) -> None:
    """Ship the example's fixed job (its query through the mapped classes) in place of the leaking one."""
    package = project / "clinic"
    leaky, fixed = (package / "jobs.py").read_text(), (package / "jobs_fixed.py").read_text()
    assert LEAKY in leaky and "text(" not in fixed and "OVERDUE = (\n    select(" in fixed
    (package / "jobs.py").write_text(fixed)


def _verify(project: Path, driver: str, report_dir: Path) -> tuple[subprocess.CompletedProcess, dict, float]:
    started = time.monotonic()
    result = _harness(project, "verify", "--driver", driver, "--routes", "transaction", "--scenarios", "generated",
                      "--profile", "dev", "--seed", "7", "--jobs", "1", "--report-dir", str(report_dir))
    seconds = time.monotonic() - started
    results = report_dir / "latest" / "results.json"
    assert results.is_file(), result.stdout + result.stderr
    data = json.loads(results.read_text())
    assert data["complete"] and data["cells"], result.stdout + result.stderr
    for cell in data["cells"]:  # the app's engine really ran on the driver asked for
        assert cell["driver"] == driver and cell["driver_used"].startswith(driver + " "), cell["driver_used"]
    return result, data, seconds


def _program_steps(cell: dict) -> list[list[str]]:
    """The counterexample's requests, each as its steps."""
    return [line.split(": ", 1)[1].split(", ") for line in cell["counterexample"]["program"]
            if line.startswith("client ")]


def test_the_scan_points_at_the_jobs_query_and_passes_once_it_is_fixed(clinic):
    scan = ("scan", "clinic", "--models", "clinic.models:Base", "--json")
    result = _harness(clinic, *scan, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    gating = [f for f in json.loads(result.stdout)["findings"] if f["gating"]]
    line = next(n for n, text in enumerate((clinic / "clinic" / "jobs.py").read_text().splitlines(), 1)
                if "FROM invoice AS i JOIN patient" in text)
    assert sorted((f["path"], f["line"], f["table"]) for f in gating) == [
        ("clinic/jobs.py", line, "invoice"), ("clinic/jobs.py", line, "patient")], gating
    _fix(clinic)
    result = _harness(clinic, *scan, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [f for f in json.loads(result.stdout)["findings"] if f["gating"]]


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_the_jobs_leak_is_one_request_on_every_driver_and_the_fix_passes(clinic, tmp_path, driver):
    result, data, seconds = _verify(clinic, driver, tmp_path / "before")
    assert result.returncode == 1, result.stdout + result.stderr
    assert data["verdict"] == "fail"
    assert data["environment"]["actions"].startswith("clinic.jobs:send_payment_reminders")
    assert "patient" in data["environment"]["models"] and "invoice" in data["environment"]["models"]
    for cell in data["cells"]:
        assert cell["verdict"] == "fail", cell["verdict_reason"]
        leaks = [f for f in cell["findings"] if f["gating"] and f["kind"] == "cross_tenant_read"]
        assert leaks and all(JOB in f["explanation"] for f in leaks), cell["findings"]
        assert [f for f in cell["findings"] if f["gating"]] == leaks, cell["findings"]  # nothing else gates
        # minimal: one request, the job alone between opening and ending it
        assert _program_steps(cell) == [["open", JOB, "end_request"]], cell["counterexample"]
        [job] = [e for e in cell["evidence"] if e["step"] == JOB]
        assert job["flagged"] and job["error"] is None
        # what it read: public's decoy invoices and patients, where the search_path fell back to
        read = {(row["table"], row["owner"]) for row in job["rows"]}
        assert {("invoice", "public"), ("patient", "public")} <= read, job["rows"]
    print(f"\n{driver}: fail, counterexample {_program_steps(data['cells'][0])}, {seconds:.0f}s")

    _fix(clinic)
    result, data, seconds = _verify(clinic, driver, tmp_path / "after")
    assert result.returncode == 0, result.stdout + result.stderr
    assert data["verdict"] == "pass"
    assert {c["verdict"] for c in data["cells"]} == {"pass"}, [c["verdict_reason"] for c in data["cells"]]
    assert all(not c["findings"] or not any(f["gating"] for f in c["findings"]) for c in data["cells"])
    print(f"{driver}: fixed, pass, {seconds:.0f}s")
