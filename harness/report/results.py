"""results.json: the machine-readable record of a run.

Schema ``tenant-harness/results``, version 1 (additions keep the version; a
removal or a change of meaning bumps it):

- ``schema``, ``version``, ``run_id``, ``started`` (ISO 8601 UTC), ``seconds`` (of a merged
  report: the longest shard's, as shards run side by side)
- ``verdict``: ``"pass"`` when every cell measured its required verdict, else ``"fail"``
- ``exit_status``: what ``harness verify`` (or ``harness report merge``) exits with (0 or 1)
- ``builtin_self_check``: true when the built-ins ran against their expectation table
- ``environment``: versions (postgresql, pgbouncer, sqlalchemy, psycopg, python),
  backend, profile, seed, pool sizes, tenants, decoys, ``models`` (the team's spec and its
  tenant tables), ``actions`` (the team's specs), ``pooler_requested`` (when the team gave
  --pgbouncer-config / --pgbouncer-set: what was carried over and what was ignored), ``pooler_settings``
  (native and docker stacks: an object route -> setting -> value, the settings that decide what clients
  see as each PgBouncer ran with them, read back with SHOW CONFIG), ``deployment_facts`` (one line: what
  the expectation table's deployment conditions read). In a run with ``deployments`` the top level is the
  first deployment's, and ``environment.deployments`` is an object deployment -> that deployment's own
  environment (the same keys)
- ``cells``: one object per strategy x route x scenario (x deployment):
  ``id`` (the page's anchor), ``deployment`` (null, or the built-in deployment it ran on), ``strategy``, ``route``, ``scenario``, ``layout`` (schema | rls), ``verdict`` (pass | fail | inconclusive | cannot_run),
  ``verdict_reason``, ``required``, ``required_reason``, ``required_when`` (the deployment condition that
  turned the required verdict, "" for the entry that holds everywhere), ``as_required`` (bool),
  ``findings`` (``kind``, ``explanation``, ``steps``, ``tenant``, ``gating``, ``left_by``: null, or the seq of
  the step whose leftover session state caused it),
  ``coverage`` (``steps``, ``backends``, ``shared_backends``, ``tenants``,
  ``probed_connections``, ``separate_pools``, ``connection_refused``, ``refused_tenants``), ``seconds``, ``replay`` (null, or the command that reruns exactly this cell: every
  generated cell has one, any other cell when it fails or is not as required),
  ``figures`` (hammer: requests, requests_per_second, pool_checkouts, threads, history),
  ``schema_in_sql`` (bool or null), ``counterexample`` (null, or ``program``:
  lines of the minimal program), ``evidence`` (the steps findings point at, with
  their neighbours: ``seq``, ``client``, ``tenant``, ``step``, ``pid``,
  ``search_path``, ``user`` (current_user: the role that ran the step), ``rows``, ``error``, ``flagged``,
  ``state_set``: the session state its statements set, each ``pid``, ``search_path`` (right after it),
  ``statement``), ``messages`` (the app's warnings and log records while the cell's steps ran, the first
  distinct ones: ``kind`` (warning | log), ``source`` (category or logger), ``level``, ``text``, ``where``,
  ``count``, ``first_step``) and ``messages_not_kept`` (how many more were emitted)
- ``migration``: one row per strategy (see ``harness.report.migration``)
- ``scan``: null, or what ``harness scan --json`` prints for the same code: ``paths``,
  ``findings`` (``path``, ``line``, ``rule``, ``message``, ``snippet``, ``tag`` (app | scripts |
  tests | migrations or a tag of the team's), ``gating`` (bool: only gating findings fail the
  run; migrations and information do not), ``table`` (the table concerned, or null)), and,
  when the scan ran in this run, ``not_scanned`` (``path``, ``reason``: files the scan could
  not read, a limit of the scan that never gates), ``files`` (Python files read), ``base``
  (the folder relative paths are relative to), ``tenant_tables`` and ``tables_from`` (where
  they came from). The report folder then holds ``scan.sarif``: the findings as SARIF 2.1.0.
- ``strategies``, ``routes``, ``scenarios``, ``deployments``: the plan's axes in run order (cells run
  deployment outermost, then strategy, route, scenario); ``deployments`` is empty for a run on one stack
- ``drivers``: the drivers of a ``--drivers`` run, in run order (empty otherwise); ``variants``: the matrix
  columns the cells ran in (a deployment, a driver, or ``deployment/driver``), empty for one stack and driver.
  Each cell also has ``driver`` (the driver its route URL named, null for the default), ``driver_used``
  (what the layer's engine really used, with its version) and ``variant``
- ``differences``: the strategy x route x scenario cells measured on two deployments or more whose verdicts
  differ (empty without deployments): ``strategy``, ``route``, ``scenario``, ``deployments`` (one object per
  deployment, in run order: ``deployment``, ``verdict``, ``reason``, ``when`` and ``condition``: the
  deployment condition of the cell's required verdict, by name and as a sentence, "" when none)
- ``plan``: null, or a hex string naming the run's whole cell plan: the same in
  every shard of one run
- ``shard``: null for a whole run, or ``index`` (1..count) and ``count``: this
  report holds that shard's cells only (``harness report merge`` joins them)
- ``complete``: true for a finished run; false in the results.json that
  `harness verify` rewrites as cells finish, and in the report of a run that
  stopped early (its finished cells only; its verdict is then ``fail``)
- ``merged_from`` (merged reports only): one object per shard: ``run_id``,
  ``started``, ``seconds``, ``index``, ``count``
"""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.checks.verdict import Verdict
from harness.report.differences import deployment_differences
from harness.report.migration import migration_rows
from harness.scan.findings import scan_json
from harness.workload.cell import CellResult, variant_label
from harness.workload.program import describe_program

SCHEMA = "tenant-harness/results"
VERSION = 1
EVIDENCE_CONTEXT = 3
EVIDENCE_LIMIT = 80


def cell_id(cell: CellResult) -> str:
    where = f"{cell.column}--" if cell.column else ""
    raw = f"{where}{cell.strategy}--{cell.route}--{cell.scenario}"
    return "cell-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in raw)


def evidence_steps(cell: CellResult) -> list[dict[str, Any]]:
    """The steps the findings point at, with a few neighbours; all steps of a short counterexample."""
    steps = cell.history.steps
    flagged = {s for f in cell.findings for s in f.steps}
    if cell.program is not None or len(steps) <= EVIDENCE_LIMIT // 2:
        keep = set(range(len(steps)))
    else:
        positions = [i for i, s in enumerate(steps) if s.seq in flagged]
        keep = {j for i in positions for j in range(i - EVIDENCE_CONTEXT, i + EVIDENCE_CONTEXT + 1)
                if 0 <= j < len(steps)}
    out = []
    for i in sorted(keep)[:EVIDENCE_LIMIT]:
        s = steps[i]
        out.append({"seq": s.seq, "client": s.client, "request": s.request, "tenant": s.tenant, "step": s.step,
                    "style": s.style, "pid": s.pid, "search_path": s.search_path, "user": s.user,
                    "rows": [dataclasses.asdict(r) for r in s.rows], "error": dataclasses.asdict(s.error) if s.error else None,
                    "note": s.note, "flagged": s.seq in flagged,
                    "state_set": [dataclasses.asdict(c) for c in s.state_set]})
    return out


def cell_json(cell: CellResult) -> dict[str, Any]:
    """A cell as results.json (and cells.json) hold it: the one serialisation of a cell."""
    return {
        "id": cell_id(cell), "deployment": cell.deployment, "driver": cell.driver, "driver_used": cell.driver_used,
        "variant": cell.column, "strategy": cell.strategy, "route": cell.route, "scenario": cell.scenario,
        "layout": cell.history.layout,
        "verdict": cell.verdict.value, "verdict_reason": cell.reason,
        "required": cell.required.label if cell.required else None,
        "required_reason": cell.required.reason if cell.required else None,
        "required_when": cell.required.when if cell.required else "",
        "as_required": cell.as_required,
        "findings": [dataclasses.asdict(f) for f in cell.findings],
        "coverage": dataclasses.asdict(cell.coverage), "seconds": round(cell.seconds, 3),
        "replay": cell.replay, "figures": cell.figures, "schema_in_sql": cell.schema_in_sql,
        "counterexample": {"program": describe_program(cell.program).splitlines()} if cell.program else None,
        "evidence": evidence_steps(cell) if cell.findings else [],
        "messages": [dataclasses.asdict(m) for m in cell.history.messages],
        "messages_not_kept": cell.history.messages_not_kept,
    }


def results_json(run) -> dict[str, Any]:
    cells = [cell_json(c) for c in run.cells]
    complete = bool(getattr(run, "complete", True))
    shard = getattr(run, "shard", None)
    return {
        "schema": SCHEMA, "version": VERSION, "run_id": run.run_id, "started": run.started.isoformat(),
        # an incomplete run (still going, or stopped early) is not a pass, whatever its finished cells say
        "seconds": round(run.seconds, 1), "verdict": Verdict.PASS if run.ok and complete else Verdict.FAIL,
        "exit_status": 0 if run.ok and complete else 1, "builtin_self_check": run.builtin_self_check,
        "strategies": run.strategies, "routes": list(run.routes or run.config.routes),
        "scenarios": _planned_scenarios(run), "deployments": list(getattr(run, "deployments", [])),
        "drivers": list(getattr(run, "drivers", [])),
        "variants": list(dict.fromkeys(c.column for c in run.cells if c.column is not None)),
        "environment": run.environment,
        "cells": cells, "differences": [d.as_json() for d in deployment_differences(run.cells)],
        "not_run": list(getattr(run, "not_run", [])),
        "migration": migration_rows(cells),
        "scan": None if run.scan is None else _scan(run),
        "plan": getattr(run, "plan", None) or None,  # a run that was given no plan says null, not ""
        "shard": None if shard is None else {"index": int(shard["index"]), "count": int(shard["count"])},
        # False while the run is going (results.json is rewritten as cells finish) or when it stopped early
        "complete": complete,
    }


def _scan(run) -> dict[str, Any]:
    """The ``scan`` key, from the run's findings and, when the scan ran in this run, its whole record."""
    return scan_json(run.scan_paths, run.scan, getattr(run, "scan_result", None))


def _planned_scenarios(run) -> list[str]:
    """The scenarios of the whole plan, in run order, also for a shard that ran only some of them."""
    planned = getattr(run, "scenarios", None) or run.config.scenarios
    if not planned:
        from harness.workload.scenarios import SCENARIOS  # the default set; late: the registry is heavy

        planned = SCENARIOS
    return list(planned)


@dataclasses.dataclass(frozen=True)
class Axes:
    """The plan's dimensions in run order: the grid's rows and columns, and the order of the cells."""

    deployments: tuple[str | None, ...]
    strategies: tuple[str, ...]
    routes: tuple[str, ...]
    scenarios: tuple[str, ...]

    def position(self, cell: dict[str, Any]) -> tuple[int, int, int, int]:
        """Where the unsharded run puts this cell: deployment, strategy, route, scenario (outer to inner)."""
        return (self.deployments.index((cell.get("variant") or cell.get("deployment"))),
                self.strategies.index(cell["strategy"]),
                self.routes.index(cell["route"]), self.scenarios.index(cell["scenario"]))


def axes(results: dict[str, Any]) -> Axes:
    """The axes a results dict declares, completed by any value its cells show that they do not list
    (an older results.json lists only strategies; then the cells' own order decides)."""
    cells = results["cells"]

    def axis(key: str, field: str) -> tuple:
        return tuple(dict.fromkeys([*(results.get(key) or ()), *(c.get(field) for c in cells)]))

    # Cells without a deployment key sit under the one deployment None: one grid, as today.
    # A run with drivers (or deployments and drivers) groups its cells by variant: deployment/driver, in
    # the plan's order (a shard's own list holds only the variants its cells drew).
    planned = [variant_label(d, v) for d in results.get("deployments") or [None] for v in results.get("drivers") or [None]]
    variants = tuple(dict.fromkeys([*(p for p in planned if p), *(results.get("variants") or ()),
                                    *((c.get("variant") or c.get("deployment")) for c in cells)]))
    return Axes(deployments=variants or (None,),
                strategies=axis("strategies", "strategy"), routes=axis("routes", "route"),
                scenarios=axis("scenarios", "scenario"))
