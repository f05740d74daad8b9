"""The CI templates parse and do what the README says (they cannot run here)."""

from __future__ import annotations

import fnmatch
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


def uses(job: dict, action: str) -> list[dict]:
    return [step for step in job["steps"] if step.get("uses", "").startswith(action)]


def runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_nightly_runs_on_a_schedule_with_the_nightly_profile_and_keeps_reports_and_examples():
    nightly = load("nightly.yml")
    assert nightly["on"]["schedule"][0]["cron"]
    verify = nightly["jobs"]["verify"]
    assert verify["env"]["HARNESS_PROFILE"] == "nightly"
    assert "make setup" in runs(verify) and "pgbouncer" in runs(verify) and "postgresql" in runs(verify)
    caches = uses(verify, "actions/cache")
    assert caches and caches[0]["with"]["path"] == verify["env"]["HARNESS_EXAMPLE_DB"]
    # Each shard keeps its own examples: concurrent saves under one key would collide.
    assert "${{ matrix.shard }}" in caches[0]["with"]["key"]


def test_nightly_fans_out_over_shards_with_one_seed_for_all():
    nightly = load("nightly.yml")
    plan, verify = nightly["jobs"]["plan"], nightly["jobs"]["verify"]
    shards = verify["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1)) and len(shards) >= 2
    assert verify["strategy"]["fail-fast"] is False
    assert verify["needs"] == "plan" and "seed" in plan["outputs"]
    assert "github.run_id" in runs(plan)  # the seed survives a re-run of a failed shard
    (step,) = [s for s in verify["steps"] if "harness verify" in s.get("run", "")]
    assert "--shard ${{ matrix.shard }}/${{ strategy.job-total }}" in step["run"]
    assert '--seed "$SEED"' in step["run"] and step["env"]["SEED"] == "${{ needs.plan.outputs.seed }}"
    # A failed verdict (exit 1) is the merge's to judge; an error (2) fails the shard.
    assert 'test "$status" -le 1' in step["run"]
    (upload,) = uses(verify, "actions/upload-artifact")
    assert upload["if"] == "always()" and "${{ matrix.shard }}" in upload["with"]["name"]


def test_nightly_merges_the_shards_and_fails_on_the_merged_verdict():
    nightly = load("nightly.yml")
    verify, merge = nightly["jobs"]["verify"], nightly["jobs"]["merge"]
    assert "verify" in merge["needs"] and merge["if"] == "always()"
    (download,) = uses(merge, "actions/download-artifact")
    shard_artifact = uses(verify, "actions/upload-artifact")[0]["with"]["name"]
    for k in verify["strategy"]["matrix"]["shard"]:
        name = shard_artifact.replace("${{ matrix.shard }}", str(k))
        assert fnmatch.fnmatch(name, download["with"]["pattern"])
    (step,) = [s for s in merge["steps"] if "harness report merge" in s.get("run", "")]
    assert f"{download['with']['path']}/{download['with']['pattern']}" in step["run"]
    assert "--report-dir reports" in step["run"]
    assert not step.get("continue-on-error") and "||" not in step["run"]  # its exit status is the workflow's
    (upload,) = uses(merge, "actions/upload-artifact")
    assert upload["with"]["path"] == "reports/" and upload["if"] == "always()"
    assert upload["with"]["name"] != shard_artifact


def test_release_gate_runs_make_verify_derandomized():
    release = load("release.yml")
    job = next(iter(release["jobs"].values()))
    assert job["env"]["HARNESS_DERANDOMIZE"] == "1"
    assert any(step.get("run") == "make verify" for step in steps(release))
    assert "tags" in release["on"]["push"]
