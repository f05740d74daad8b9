"""Shards, merge and jobs on real servers: the same seed gives the same cells, however the run is split.

`harness verify --seed S` (on two stacks at once) must equal, cell by cell, the
merge of `--shard 1/3`, `2/3` and `3/3` (each on one stack) with the same seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import resolve_config
from harness.jobs import PlannedCell
from harness.tenancy.strategy import load_strategy
from harness.verify import plan_cells, plan_id, shard_of

# A leaky and a sound strategy, two routes, a named and a searching scenario: every verdict kind, quickly.
PLAN = ["--strategy", "search_path_set", "--strategy", "translate_map_pinned", "--routes", "direct,transaction",
        "--scenarios", "after_commit,pool_state,generated", "--profile", "dev", "--seed", "4242"]


def harness(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=600,
                          env=os.environ, cwd=tmp_path)


def verify(tmp_path: Path, report_dir: Path, *args: str) -> dict:
    done = harness(tmp_path, "verify", "--report-dir", str(report_dir), "--example-db",
                   str(tmp_path / f"examples-{report_dir.name}"), *PLAN, *args)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return json.loads((report_dir / "latest" / "results.json").read_text())


def cells(results: dict) -> list[tuple]:
    return [(c["strategy"], c["route"], c["scenario"], c["verdict"], c["required"], c["as_required"],
             sorted({f["kind"] for f in c["findings"] if f["gating"]}))
            for c in results["cells"]]


def test_verify_equals_the_merge_of_its_shards(tmp_path):
    whole = verify(tmp_path, tmp_path / "whole", "--jobs", "2")
    shards = [verify(tmp_path, tmp_path / f"shard{k}", "--shard", f"{k}/3", "--jobs", "1") for k in (1, 2, 3)]
    assert {s["plan"] for s in shards} == {whole["plan"]}
    assert [s["shard"] for s in shards] == [{"index": k, "count": 3} for k in (1, 2, 3)]
    assert sum(len(s["cells"]) for s in shards) == len(whole["cells"]) == 12
    merged_dir = tmp_path / "merged"
    done = harness(tmp_path, "report", "merge", *(str(tmp_path / f"shard{k}" / "latest") for k in (3, 1, 2)),
                   "--report-dir", str(merged_dir))
    assert done.returncode == (0 if whole["verdict"] == "pass" else 1), done.stdout + done.stderr
    merged = json.loads((merged_dir / "latest" / "results.json").read_text())
    assert cells(merged) == cells(whole)
    assert {c[3] for c in cells(whole)} >= {"pass", "fail"}
    assert merged["verdict"] == whole["verdict"] and merged["plan"] == whole["plan"]


def test_shards_of_different_seeds_are_refused(tmp_path):
    one = verify(tmp_path, tmp_path / "one", "--shard", "1/2", "--jobs", "1", "--scenarios", "after_commit")
    done = harness(tmp_path, "verify", "--report-dir", str(tmp_path / "two"), *PLAN, "--seed", "7",
                   "--shard", "2/2", "--jobs", "1", "--scenarios", "after_commit")
    assert done.returncode in (0, 1), done.stderr
    refused = harness(tmp_path, "report", "merge", str(tmp_path / "one" / "latest"), str(tmp_path / "two" / "latest"),
                      "--report-dir", str(tmp_path / "merged"))
    assert refused.returncode == 2 and "seed" in refused.stderr, refused.stderr
    assert one["shard"] == {"index": 1, "count": 2}
    assert not (tmp_path / "merged").exists()


# -- the plan, without servers ------------------------------------------------------------------
def plan(shard: str | None = None) -> list[PlannedCell]:
    config = resolve_config({"shard": shard} if shard else {}, env={})
    specs = [load_strategy(n) for n in ("search_path_set", "translate_map", "rls_guc_pinned")]
    return shard_of(plan_cells(specs, config.routes, ["after_commit", "raw_text", "generated", "hammer"]),
                    config.shard)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 36, 40])
def test_shards_partition_the_plan(count):
    parts = [plan(f"{k}/{count}") for k in range(1, count + 1)]
    assert sorted(c.index for part in parts for c in part) == [c.index for c in plan()]
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_the_plan_id_names_the_seed_and_the_plan_not_the_shard():
    config = resolve_config({}, env={})
    specs = [load_strategy("translate_map")]
    assert plan_id(config, specs, ["raw_text"], 1) == plan_id(resolve_config({"shard": "2/3"}, env={}), specs,
                                                               ["raw_text"], 1)
    assert plan_id(config, specs, ["raw_text"], 1) != plan_id(config, specs, ["raw_text"], 2)
    assert plan_id(config, specs, ["raw_text"], 1) != plan_id(config, specs, ["after_commit"], 1)


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_a_bad_shard_is_a_usage_error(bad):
    from harness.errors import UsageError

    with pytest.raises(UsageError, match="shard"):
        resolve_config({"shard": bad}, env={})
