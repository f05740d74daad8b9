"""`harness report merge` without a server: a tiny fake run, cut into 3 shards the way
`harness verify --shard K/3` does, joins back into what the unsharded run writes, cell by
cell; every refusal says what differs and how to fix it."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from harness.checks import Verdict
from harness.cli import main
from harness.config import resolve_config
from harness.errors import UsageError
from harness.report.merge import Shard, load_shard, merge_results
from harness.report.results import results_json
from harness.report.writer import write_report, write_report_folder
from harness.scan.scanner import ScanFinding
from harness.verify import VerifyRun
from harness.workload.expectations import Expectation

from test_report import cell

STRATEGIES = ["leaky", "sound", "other"]
ROUTES = ["direct", "session", "transaction"]
SCENARIOS = ["fresh_session", "after_commit", "raw_text"]
PLAN = "5e1f" * 16


def fake_run(tmp_path: Path, *, shard: tuple[int, int] | None = None, off: bool = True, seed: int = 42,
             plan: str = PLAN) -> VerifyRun:
    """The unsharded run (shard None), or its shard K of N: every N-th cell, as the plan orders them."""
    config = resolve_config({"report_dir": tmp_path, "scenarios": ",".join(SCENARIOS)}, env={}, cwd=tmp_path)
    cells = [cell(strategy, route, scenario, strategy == "leaky", "fail" if strategy == "leaky" else "pass")
             for strategy in STRATEGIES for route in ROUTES for scenario in SCENARIOS]
    if off:
        cells[-1].required = Expectation(Verdict.FAIL, "a wrong expectation, to see a cell not as required")
    if shard is not None:
        cells = cells[shard[0] - 1::shard[1]]
    index = shard[0] if shard else 0
    run = VerifyRun(run_id=f"20260101-00000{index}-shard{index}",
                    started=dt.datetime(2026, 1, 1, 0, 0, index, tzinfo=dt.timezone.utc), config=config,
                    strategies=list(STRATEGIES), builtin_self_check=True, seed=seed, cells=cells,
                    routes=list(ROUTES), environment={"postgresql": "15", "profile": "ci", "seed": str(seed)},
                    not_run=[{"what": "strategy rls_guc", "reason": "no database of its own"}],
                    seconds=10.0 + index)
    run.scan = [ScanFinding("app/db.py", 7, "set-search-path-sql", "SET search_path in SQL.", "SET search_path")]
    run.scan_paths = ["app"]
    # The attributes `harness verify --shard` sets; results_json reads them with getattr.
    run.plan = plan
    run.shard = None if shard is None else {"index": shard[0], "count": shard[1]}
    return run


def shards(tmp_path: Path, count: int = 3, **kwargs) -> list[Shard]:
    return [Shard(f"shard-{k}", results_json(fake_run(tmp_path, shard=(k, count), **kwargs)))
            for k in range(1, count + 1)]


def write_shards(tmp_path: Path, **kwargs) -> list[Path]:
    """Each shard's report folder, as the CI job downloads them: one folder per shard."""
    folders = []
    for k in (1, 2, 3):
        folders.append(write_report(fake_run(tmp_path, shard=(k, 3), **kwargs), tmp_path / f"shard-{k}"))
    return folders


def test_results_json_names_the_plan_and_the_shard(tmp_path):
    whole = results_json(fake_run(tmp_path))
    part = results_json(fake_run(tmp_path, shard=(2, 3)))
    assert whole["plan"] == part["plan"] == PLAN
    assert whole["shard"] is None and part["shard"] == {"index": 2, "count": 3}
    assert (part["strategies"], part["routes"], part["scenarios"]) == (STRATEGIES, ROUTES, SCENARIOS)
    assert len(part["cells"]) == len(whole["cells"]) // 3


def test_a_run_without_plan_attributes_writes_nulls(tmp_path):
    run = fake_run(tmp_path)
    del run.plan, run.shard
    data = results_json(run)
    assert data["plan"] is None and data["shard"] is None


def test_three_shards_merge_into_the_unsharded_results_cell_by_cell(tmp_path):
    whole = results_json(fake_run(tmp_path))
    parts = shards(tmp_path)
    merged = merge_results([parts[2], parts[0], parts[1]])  # given out of order on purpose

    assert len(merged["cells"]) == len(whole["cells"]) == 27
    for got, want in zip(merged["cells"], whole["cells"], strict=True):
        assert got == want
    for key in ("schema", "version", "verdict", "exit_status", "builtin_self_check", "strategies", "routes",
                "scenarios", "environment", "not_run", "migration", "scan", "plan"):
        assert merged[key] == whole[key], key
    assert merged["verdict"] == "fail" and merged["exit_status"] == 1
    assert merged["shard"] is None
    assert merged["not_run"] == [{"what": "strategy rls_guc", "reason": "no database of its own"}]
    assert merged["scan"]["findings"] == whole["scan"]["findings"]  # one copy, not one per shard
    # The shards ran side by side: the merged run took as long as its longest shard.
    assert merged["seconds"] == 13.0
    assert [m["index"] for m in merged["merged_from"]] == [1, 2, 3]
    assert merged["started"] == min(p.results["started"] for p in parts)


def test_the_merged_verdict_is_recomputed(tmp_path):
    merged = merge_results(shards(tmp_path, off=False))
    assert merged["verdict"] == "fail"  # the scan still found a leftover
    clean = shards(tmp_path, off=False)
    for part in clean:
        part.results["scan"] = None
        part.results["verdict"], part.results["exit_status"] = "fail", 1  # what a shard says is not kept
    assert merge_results(clean)["verdict"] == "pass"
    assert merge_results(clean)["exit_status"] == 0


def test_an_unsharded_report_merges_alone_into_itself(tmp_path):
    whole = results_json(fake_run(tmp_path))
    merged = merge_results([Shard("whole", whole)])
    assert merged["cells"] == whole["cells"] and merged["verdict"] == whole["verdict"]


def test_cli_merges_shard_folders_into_one_report(tmp_path, capsys):
    folders = write_shards(tmp_path)
    out = tmp_path / "merged"
    status = main(["report", "merge", str(folders[1]), str(folders[0] / "results.json"), str(folders[2]),
                   "--report-dir", str(out)])
    printed = capsys.readouterr().out
    assert status == 1
    (folder,) = [p for p in out.iterdir() if p.name != "latest"]
    assert {p.name for p in folder.iterdir()} == {"index.html", "results.json", "junit.xml"}
    assert (out / "latest").resolve() == folder.resolve()
    data = json.loads((folder / "results.json").read_text())
    whole = json.loads(json.dumps(results_json(fake_run(tmp_path)), default=str))
    assert data["cells"] == whole["cells"]
    assert "FAIL: 1 of 27 cells differ from the expectation table" in printed
    assert "3 shard(s)" in printed and "other x transaction x raw_text" in printed
    html = (folder / "index.html").read_text()
    assert html.count('<a class="mark ') == 27
    assert "<script" not in html


def test_cli_exits_0_when_the_merged_verdict_passes(tmp_path):
    folders = write_shards(tmp_path, off=False)
    for folder in folders:
        data = json.loads((folder / "results.json").read_text())
        data["scan"] = None
        (folder / "results.json").write_text(json.dumps(data))
    assert main(["report", "merge", *map(str, folders), "--report-dir", str(tmp_path / "merged")]) == 0


# Refusals: each one a UsageError with a remedy, and exit status 2 from the command line.

def refusal(parts: list[Shard]) -> UsageError:
    with pytest.raises(UsageError) as caught:
        merge_results(parts)
    assert caught.value.fix, "a refusal says how to fix it"
    return caught.value


def test_refuses_shards_of_different_plans(tmp_path):
    parts = shards(tmp_path)
    parts[1] = shards(tmp_path, plan="0bad" * 16)[1]
    error = refusal(parts)
    assert "disagree on the plan" in error.problem
    assert any("shard 2/3" in line and "0bad0bad" in line for line in error.checked)


def test_refuses_shards_of_different_seeds(tmp_path):
    parts = shards(tmp_path)
    parts[2] = shards(tmp_path, seed=7)[2]
    error = refusal(parts)
    assert "disagree on the seed" in error.problem
    assert any("shard 3/3" in line and '"7"' in line for line in error.checked)
    assert any("--seed" in fix for fix in error.fix)


def test_refuses_shards_of_different_server_versions(tmp_path):
    parts = shards(tmp_path)
    parts[0].results["environment"]["postgresql"] = "18"
    assert "the environment's postgresql" in refusal(parts).problem


def test_refuses_the_same_shard_twice(tmp_path):
    parts = shards(tmp_path)
    twice = Shard("again", copy.deepcopy(parts[1].results))
    error = refusal([parts[0], parts[1], twice])
    assert "Shard 2/3 is given twice: shard-2 and again" in error.problem


def test_refuses_missing_shards_and_names_them(tmp_path):
    parts = shards(tmp_path, count=4)
    error = refusal([parts[1]])
    assert "Shard(s) 1, 3, 4 of 4 missing" in error.problem
    assert "also give the report folder of shard 3/4" in error.fix


def test_refuses_shards_that_were_cut_differently(tmp_path):
    parts = shards(tmp_path)
    parts[0] = dataclasses.replace(parts[0], results={**parts[0].results, "shard": {"index": 1, "count": 2}})
    assert "disagree on the shard count" in refusal(parts).problem


def test_refuses_a_cell_in_two_shards(tmp_path):
    parts = shards(tmp_path)
    parts[1].results["cells"].append(parts[0].results["cells"][0])
    assert "is in shard 1/3 (shard-1) and in shard 2/3 (shard-2)" in refusal(parts).problem


def test_refuses_results_without_a_plan(tmp_path):
    parts = shards(tmp_path)
    for part in parts:
        part.results["plan"] = None
    assert "name no plan" in refusal(parts).problem


def test_refuses_a_folder_without_results_json(tmp_path):
    with pytest.raises(UsageError) as caught:
        load_shard(tmp_path / "empty")
    assert "no results.json there" in caught.value.problem and caught.value.fix


def test_refuses_a_results_json_of_another_version(tmp_path):
    folder = write_shards(tmp_path)[0]
    data = json.loads((folder / "results.json").read_text())
    data["version"] = 2
    (folder / "results.json").write_text(json.dumps(data))
    with pytest.raises(UsageError) as caught:
        load_shard(folder)
    assert "version 2" in caught.value.problem and caught.value.fix


def test_refuses_a_file_that_is_not_results_json(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UsageError, match="not a readable results.json"):
        load_shard(tmp_path)
    (tmp_path / "results.json").write_text('{"schema": "something-else"}')
    with pytest.raises(UsageError, match="not a harness results.json"):
        load_shard(tmp_path)


@pytest.mark.parametrize("case", ["missing results.json", "missing shard", "same shard twice", "other seed"])
def test_cli_refusals_exit_2_with_the_remedy(tmp_path, capsys, case):
    folders = write_shards(tmp_path)
    if case == "missing results.json":
        (folders[2] / "results.json").unlink()
        args, expected = folders, "no results.json there"
    elif case == "missing shard":
        args, expected = folders[:2], "Shard(s) 3 of 3 missing"
    elif case == "same shard twice":
        args, expected = [folders[0], folders[0], folders[1], folders[2]], "Shard 1/3 is given twice"
    else:
        other = write_report(fake_run(tmp_path, shard=(3, 3), seed=7), tmp_path / "other")
        args, expected = [folders[0], folders[1], other], "disagree on the seed"
    out = tmp_path / "merged"
    assert main(["report", "merge", *map(str, args), "--report-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "To fix this" in err
    assert not out.exists(), "a refused merge writes nothing"


def test_the_page_says_whether_it_is_a_shard_or_a_merge(tmp_path):
    shard_page = (write_report(fake_run(tmp_path, shard=(2, 3)), tmp_path / "one") / "index.html").read_text()
    assert "shard 2 of 3</strong> of plan 5e1f5e1f5e1f" in shard_page
    merged_page = (write_report_folder(merge_results(shards(tmp_path)), tmp_path / "all") / "index.html").read_text()
    assert "merged from 3 shards of plan 5e1f5e1f5e1f" in merged_page


def test_a_shard_that_drew_no_cell_merges(tmp_path):
    """A shard with no cell started no stack, so it has no environment; the plan still ties it to the run."""
    whole = json.loads(json.dumps(results_json(fake_run(tmp_path)), default=str))
    full = json.loads(json.dumps(results_json(fake_run(tmp_path, shard=(1, 1))), default=str))
    full["shard"] = {"index": 1, "count": 2}
    empty = {**full, "cells": [], "environment": {}, "shard": {"index": 2, "count": 2}, "migration": [],
             "run_id": "20260101-000002-shard2"}
    merged = merge_results([Shard("one", full), Shard("two", empty)])
    assert [c["id"] for c in merged["cells"]] == [c["id"] for c in whole["cells"]]
    assert merged["environment"]["seed"] == whole["environment"]["seed"]
