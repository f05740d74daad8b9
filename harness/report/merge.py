"""`harness report merge`: one report from the results.json of every shard of one run.

`harness verify --shard K/N` runs a deterministic 1/N of the run's cells and
writes an ordinary report folder whose results.json names the whole run's
``plan`` and its ``shard``. The merge joins the shards' cells in the order the
unsharded run would have produced them (deployment, strategy, route, scenario,
outer to inner, along the plan's axes), recomputes the verdict, and refuses
anything that would make the joined report claim more than was measured:
shards of different plans, seeds or environments, a shard given twice, a shard
missing, a results.json of another schema version. In a run with deployments each
deployment's environment is compared across the shards whose cells ran on it, and the
differences between deployments are recomputed from the joined cells.

A merged report's ``seconds`` is the longest shard's: the shards of a CI
fan-out run side by side, so that is the run's wall time; each shard's own
figure stays in ``merged_from``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.checks.verdict import Verdict
from harness.errors import UsageError
from harness.report.differences import differences_json
from harness.report.migration import migration_rows
from harness.report.results import SCHEMA, VERSION, Axes, axes

#: What every shard of one run must agree on besides the plan and its environment (seed, versions,
#: settings); a disagreement means the shards ran different harnesses, stacks or settings, and one
#: report cannot describe them all.
AGREED = ("builtin_self_check", "strategies", "routes", "scenarios", "deployments", "drivers")

#: Environment entries that describe one shard's machine, not what it measured (`jobs`: the parallel
#: cells a runner's cores allowed); shards may differ there, and the merged report lists every value.
PER_SHARD = ("jobs",)

RERUN = "re-run every shard of one run with the same seed: harness verify --shard K/N --seed S"


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard's results.json and where it was read from (named in every refusal)."""

    source: str
    results: dict[str, Any]

    @property
    def index(self) -> int:
        # An unsharded run is its own single shard: merging it alone rewrites its report.
        return (self.results.get("shard") or {"index": 1})["index"]

    @property
    def count(self) -> int:
        return (self.results.get("shard") or {"count": 1})["count"]

    @property
    def seed(self) -> str | None:
        return _environment(self).get("seed")

    @property
    def name(self) -> str:
        return f"shard {self.index}/{self.count} ({self.source})"


def load_shard(path: Path) -> Shard:
    """Read a shard's report folder (or its results.json); refuse anything that is not one."""
    file = path / "results.json" if path.is_dir() else path
    fix = ["give the report folder that `harness verify --shard K/N` wrote (it holds results.json)",
           "download every shard's report artifact before merging"]
    if not file.is_file():
        raise UsageError(f"{path}: no results.json there.", checked=[str(file)], fix=fix)
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{file}: not a readable results.json ({exc}).", fix=fix) from exc
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise UsageError(f"{file}: not a harness results.json (schema {SCHEMA!r} expected).", fix=fix)
    if results.get("version") != VERSION:
        raise UsageError(f"{file}: results.json version {results.get('version')!r}; this harness merges "
                         f"version {VERSION} only.",
                         fix=["merge with the harness version that wrote the shards",
                              "or re-run every shard with this one"])
    return Shard(str(path), results)


def merge_results(shards: list[Shard]) -> dict[str, Any]:
    """The results dict the unsharded run would have written, from every shard of it."""
    _refuse_mismatches(shards)
    ordered = sorted(shards, key=lambda s: s.index)
    first = ordered[0].results
    cells = [cell for shard in ordered for cell in shard.results["cells"]]
    # The axes come from the shards (equal in all of them, checked above) completed by the cells.
    plan = axes({**first, "cells": cells})
    _refuse_overlaps(ordered, plan)
    cells.sort(key=plan.position)
    scans = [s.results["scan"] for s in ordered if s.results.get("scan") is not None]
    # Every shard scans the same code: each path and finding once, in the order first seen.
    # Each shard scanned the same code, so its record (files read, not scanned, tenant tables) is the first's;
    # only a finding gates (a migration's or a foreign-key note does not).
    scan = {**scans[0], "paths": list(dict.fromkeys(p for s in scans for p in s["paths"])),
            "findings": _once(f for s in scans for f in s["findings"])} if scans else None
    if scan is not None and "not_scanned" in scan:
        scan["not_scanned"] = _once(f for s in scans for f in s.get("not_scanned", []))
    ok = all(c["as_required"] for c in cells) and not (scan and any(f.get("gating", True)
                                                                     for f in scan["findings"]))
    complete = all(s.results.get("complete", True) for s in ordered)  # a shard that stopped early: no pass
    ok = ok and complete
    started = min(s.results["started"] for s in ordered)
    environment = _merged_environment(ordered, first.get("deployments") or [])
    stamp = dt.datetime.fromisoformat(started).strftime("%Y%m%d-%H%M%S")
    return {
        **first,
        # Named after the run's start and plan, so merging the same shards again rewrites one folder.
        "run_id": f"{stamp}-merged-{first['plan'][:6]}", "started": started,
        "seconds": max(s.results["seconds"] for s in ordered),
        "verdict": Verdict.PASS if ok else Verdict.FAIL, "exit_status": 0 if ok else 1,
        "environment": {**environment, **{
            key: ", ".join(dict.fromkeys(str(_environment(s)[key]) for s in ordered if key in _environment(s)))
            for key in PER_SHARD if key in environment}},
        "cells": cells, "differences": differences_json(cells),
        "variants": list(plan.deployments) if any(c.get("variant") for c in cells) else [],
        "not_run": _once(item for s in ordered for item in s.results.get("not_run", [])),
        "migration": migration_rows(cells),
        "scan": scan,
        "plan": first["plan"], "shard": None, "complete": complete,
        "merged_from": [{"run_id": s.results["run_id"], "started": s.results["started"],
                         "seconds": s.results["seconds"], "index": s.index, "count": s.count} for s in ordered],
    }


def _environment(shard: Shard) -> dict[str, Any]:
    return shard.results.get("environment") or {}


def _stacks(shard: Shard) -> dict[str | None, dict[str, Any]]:
    """The environment of each stack the shard's cells ran on: deployment -> its environment in a run with
    deployments (a shard holds those its cells drew), else {None: the environment} (none for a shard that
    drew no cell)."""
    environment = _environment(shard)
    return environment.get("deployments") or ({None: environment} if environment else {})


def _merged_environment(shards: list[Shard], deployments: list[str]) -> dict[str, Any]:
    """The environment the unsharded run writes: the first stack's, and in a run with deployments the top
    level of the first deployment with every deployment's own under ``deployments``, in run order."""
    environment = next((_environment(s) for s in shards if _environment(s)), {})
    if not deployments:
        return environment
    stacks = {name: stack for s in shards for name, stack in _stacks(s).items()}
    ordered = {name: stacks[name] for name in deployments if name in stacks}
    return {**environment, **next(iter(ordered.values()), {}), "deployments": ordered}


def _once(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each item once, in the order first seen: every shard reports what the whole stack lacks."""
    kept: dict[str, dict[str, Any]] = {}
    for item in items:
        kept.setdefault(json.dumps(item, sort_keys=True, default=str), item)
    return list(kept.values())


def _refuse_mismatches(shards: list[Shard]) -> None:
    if not shards:
        raise UsageError("Nothing to merge.", fix=["give the report folder of every shard"])
    unplanned = [s.name for s in shards if not s.results.get("plan")]
    if unplanned:
        raise UsageError("These results name no plan, so nothing shows they belong to one run: "
                         f"{', '.join(unplanned)}.",
                         fix=["merge only reports written by `harness verify --shard K/N`"])
    # The plan hashes the seed, the settings and the axes; each is compared on its own first so
    # that the refusal names what differs, and the plan last for whatever else it covers.
    # A shard that drew no cell started no stack and has no environment; the plan still holds its seed.
    measured = [s for s in shards if _environment(s)] or shards
    _refuse_disagreement(measured, "the seed", lambda s: s.seed)
    # Each stack is compared across the shards that ran cells on it: in a run with deployments a shard
    # holds only the deployments its cells drew, and its top level is the first of those.
    for name in dict.fromkeys(name for s in shards for name in _stacks(s)):
        on = [s for s in shards if name in _stacks(s)]
        where = f" on {name}" if name else ""
        for key in dict.fromkeys(k for s in on for k in _stacks(s)[name]):
            if key not in PER_SHARD:
                _refuse_disagreement(on, f"the environment's {key}{where}", lambda s: _stacks(s)[name].get(key))
    for key in AGREED:
        _refuse_disagreement(shards, key, lambda s: s.results.get(key))
    _refuse_disagreement(shards, "the plan", lambda s: s.results["plan"])
    _refuse_disagreement(shards, "the shard count", lambda s: s.count)
    count = shards[0].count
    outside = [s.name for s in shards if not 1 <= s.index <= count]
    if outside:
        raise UsageError(f"Shard numbers run from 1 to {count}: {', '.join(outside)}.", fix=[RERUN])
    seen: dict[int, Shard] = {}
    for shard in shards:
        if shard.index in seen:
            raise UsageError(f"Shard {shard.index}/{count} is given twice: {seen[shard.index].source} and "
                             f"{shard.source}.", fix=["give each shard's report folder once"])
        seen[shard.index] = shard
    missing = [k for k in range(1, count + 1) if k not in seen]
    if missing:
        raise UsageError(f"Shard(s) {', '.join(map(str, missing))} of {count} missing: the merged report would "
                         "lack their cells.",
                         checked=[shard.name for shard in sorted(shards, key=lambda s: s.index)],
                         fix=[f"also give the report folder of shard {k}/{count}" for k in missing] + [RERUN])


def _refuse_disagreement(shards: list[Shard], what: str, value: Callable[[Shard], Any]) -> None:
    values = [value(s) for s in shards]
    if any(v != values[0] for v in values[1:]):
        raise UsageError(f"The shards disagree on {what}: they are not from one run and cannot be merged.",
                         checked=[f"{s.name}: {_brief(v)}" for s, v in zip(shards, values)], fix=[RERUN])


def _brief(value: Any) -> str:
    # A plan hash is long and a mismatch shows in its first characters.
    return value[:16] if isinstance(value, str) and len(value) > 32 else json.dumps(value, default=str)


def _refuse_overlaps(shards: list[Shard], plan: Axes) -> None:
    """Shards of one plan split its cells; a cell in two shards means the split was not the plan's."""
    owner: dict[tuple[int, ...], Shard] = {}
    for shard in shards:
        for cell in shard.results["cells"]:
            where = plan.position(cell)
            if where in owner:
                on = f" on {cell['deployment']}" if cell.get("deployment") else ""
                raise UsageError(f"Cell {cell['strategy']} x {cell['route']} x {cell['scenario']}{on} is in "
                                 f"{owner[where].name} and in {shard.name}.", fix=[RERUN])
            owner[where] = shard
