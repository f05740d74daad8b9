"""The CI templates parse and do what the README says (they cannot run here)."""

from __future__ import annotations

from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_nightly_runs_on_a_schedule_with_the_nightly_profile_and_keeps_reports_and_examples():
    nightly = load("nightly.yml")
    assert nightly["on"]["schedule"][0]["cron"]
    job = next(iter(nightly["jobs"].values()))
    assert job["env"]["HARNESS_PROFILE"] == "nightly"
    runs = " ".join(step.get("run", "") for step in steps(nightly))
    assert "make verify" in runs and "pgbouncer" in runs and "postgresql" in runs
    uploads = [s for s in steps(nightly) if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"] == "reports/" and uploads[0]["if"] == "always()"
    caches = [s for s in steps(nightly) if s.get("uses", "").startswith("actions/cache")]
    assert caches and caches[0]["with"]["path"] == job["env"]["HARNESS_EXAMPLE_DB"]


def test_release_gate_runs_make_verify_derandomized():
    release = load("release.yml")
    job = next(iter(release["jobs"].values()))
    assert job["env"]["HARNESS_DERANDOMIZE"] == "1"
    assert any(step.get("run") == "make verify" for step in steps(release))
    assert "tags" in release["on"]["push"]
