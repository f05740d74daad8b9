"""Cells in words, for a terminal: one cell explained step by step, the verdict matrix, cells.json.

The HTML page and results.json are the report's other faces of the same cells
(:mod:`harness.report.results`); this module serves pytest's terminal summary
and assertion messages.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.checks.verdict import Verdict
from harness.report.results import cell_json
from harness.workload.cell import CellResult
from harness.workload.program import describe_program, step_count

LABELS = {Verdict.PASS: "pass", Verdict.FAIL: "FAIL", Verdict.INCONCLUSIVE: "inconclusive",
          Verdict.CANNOT_RUN: "cannot run"}


def explain(cell: CellResult, limit: int = 40) -> str:
    """A numbered, readable account: the verdict, the findings, then the steps."""
    where = f"{cell.deployment}: " if cell.deployment else ""
    lines = [f"{where}{cell.strategy} x {cell.route} x {cell.scenario}: {cell.verdict.value.upper()} "
             f"({cell.reason})", f"coverage: {cell.coverage.describe()}"]
    if cell.program is not None:
        size, recorded = step_count(cell.program), len(cell.history.steps)
        lines.append(f"minimal program ({size} program step{'s' * (size != 1)}, recorded as the {recorded} "
                     f"step{'s' * (recorded != 1)} below):")
        lines.extend("  " + line for line in describe_program(cell.program).splitlines())
    if cell.replay:
        lines.append(f"replay: {cell.replay}")
    flagged = {s for f in cell.findings for s in f.steps}
    for f in cell.findings:
        lines.append(f"  [{f.kind}{'' if f.gating else ', not gating'}] {f.explanation}")
    lines.append("steps:")
    for step in cell.history.steps[:limit]:
        mark = ">>" if step.seq in flagged else "  "
        rows = ", ".join(f"{r.table}#{r.id}:{r.owner}" for r in step.rows[:6])
        more = f" +{len(step.rows) - 6}" if len(step.rows) > 6 else ""
        err = f" ERROR {step.error.sqlstate} {step.error.message}" if step.error else ""
        role = f" as={step.user}" if step.user and step.user != "app" else ""
        lines.append(f"{mark}{step.seq:4d}. client {step.client} {step.tenant!r:>16} {step.step:<24} "
                     f"pid={step.pid}{role} path={step.search_path!r} rows=[{rows}{more}]{err} {step.note}".rstrip())
    if len(cell.history.steps) > limit:
        lines.append(f"  ... {len(cell.history.steps) - limit} more steps")
    for probe in cell.history.probes[:limit]:
        pids = ", ".join(str(s.pid) for s in probe.states) or "none"
        against = (f"; SHOW SERVERS: {', '.join(map(str, probe.server_pids)) or 'none'}"
                   if probe.target.startswith("pgbouncer") else "")
        busy = f"; busy, not probed: {', '.join(map(str, probe.uncovered))}" if probe.uncovered else ""
        lines.append(f"  probe after step {probe.after_step} ({probe.target}): probed {pids}{against}{busy}"
                     + (f" ERROR {probe.error}" if probe.error else ""))
    return "\n".join(lines)


def verdict_matrix(results: list[CellResult]) -> list[str]:
    """strategy x scenario rows, one column per route: pass / FAIL / inconclusive / cannot run
    (* = not as required)."""
    routes = list(dict.fromkeys(r.route for r in results))
    cells = {(r.strategy, r.scenario, r.route): r for r in results}
    rows = list(dict.fromkeys((r.strategy, r.scenario) for r in results))
    width = max(len("strategy"), *(len(s) for s, _ in rows)) + 2
    swidth = max(len("scenario"), *(len(c) for _, c in rows)) + 2
    lines = [f"{'strategy':<{width}}{'scenario':<{swidth}}" + "".join(f"{r:<15}" for r in routes)]
    for strategy, scenario in rows:
        line = f"{strategy:<{width}}{scenario:<{swidth}}"
        for route in routes:
            cell = cells.get((strategy, scenario, route))
            text = "-" if cell is None else LABELS[cell.verdict] + ("" if cell.as_required else "*")
            line += f"{text:<15}"
        lines.append(line.rstrip())
    return lines


def write_cell_results(results: list[CellResult], report_dir: Path) -> Path:
    """reports/cells.json: every cell of a pytest session, as results.json writes them."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "cells.json"
    path.write_text(json.dumps([cell_json(r) for r in results], indent=1, default=str, ensure_ascii=False))
    return path
