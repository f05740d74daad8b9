"""The nightly view: verdicts and timings of earlier runs found in the report folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.checks.verdict import Verdict
from harness.report.results import SCHEMA

MAX_RUNS = 30


def trend(report_dir: Path, current: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run, oldest first, the current one last."""
    rows = []
    for path in sorted(report_dir.glob("*/results.json")):
        if path.parent.is_symlink():  # reports/latest: the same run again
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("schema") != SCHEMA or data.get("run_id") == current["run_id"]:
            continue
        if data.get("shard"):  # a part of a run: its merged report is the run's row
            continue
        rows.append(_row(data))
    rows.sort(key=lambda r: r["started"])
    return (rows + [_row(current)])[-MAX_RUNS:]


def _row(data: dict[str, Any]) -> dict[str, Any]:
    cells = data.get("cells", [])
    return {
        "run_id": data.get("run_id"), "started": data.get("started", ""), "verdict": data.get("verdict"),
        "seconds": data.get("seconds"), "profile": data.get("environment", {}).get("profile", "?"),
        "cells": len(cells),
        **{v.value: sum(1 for c in cells if c.get("verdict") == v) for v in Verdict},
        "not_as_required": sum(1 for c in cells if not c.get("as_required", True)),
    }
