"""The migration's before/after comparison, rebuilt from the run's measurements.

One row per strategy; each column is derived from verdicts of this run, never
asserted: "yes" when every measured cell behind it passed, "no" when one
failed (with where), "?" when nothing was measured.

It reads results.json cell dicts (``harness.report.results.cell_json``), not
CellResults, so that a merge of shards, which has only the shards'
results.json, rebuilds the same table as the unsharded run.
"""

from __future__ import annotations

from typing import Any

from harness.checks.verdict import Verdict

COLUMNS = (
    ("survives_commit", "survives COMMIT"),
    ("survives_rollback", "survives ROLLBACK"),
    ("transaction_mode", "PgBouncer transaction mode"),
    ("session_mode", "PgBouncer session mode"),
    ("hostile_names", "safe with hostile tenant names"),
    ("schema_in_sql", "schema visible in the logged SQL"),
    ("raw_text", "raw text() safe"),
)


def _judge(cells: list[dict[str, Any]]) -> dict[str, Any]:
    if not cells:
        return {"value": "?", "detail": "not measured"}
    failing = [c for c in cells if c["verdict"] != Verdict.PASS]
    if not failing:
        return {"value": "yes", "detail": f"{len(cells)} cell(s) passed"}
    where = ", ".join(sorted({f"{c['scenario']}@{c['route']}" for c in failing})[:6])
    return {"value": "no", "detail": f"{len(failing)} of {len(cells)} cell(s) not passed: {where}"}


def migration_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy, in the order the strategies first appear among the cells."""
    rows = []
    for strategy in dict.fromkeys(c["strategy"] for c in cells):
        mine = [c for c in cells if c["strategy"] == strategy]

        def pick(scenario: str | None = None, route: str | None = None) -> list[dict[str, Any]]:
            return [c for c in mine if (scenario is None or c["scenario"] == scenario)
                    and (route is None or c["route"] == route)]

        sql = [c["schema_in_sql"] for c in pick("fresh_session") if c.get("schema_in_sql") is not None]
        rows.append({
            "strategy": strategy,
            "layout": mine[0]["layout"],
            "survives_commit": _judge(pick("after_commit")),
            "survives_rollback": _judge(pick("after_rollback")),
            "transaction_mode": _judge(pick(route="transaction")),
            "session_mode": _judge(pick(route="session")),
            "hostile_names": _judge(pick("hostile_names")),
            "schema_in_sql": {"value": ("yes" if all(sql) else "no") if sql else "?",
                              "detail": "ORM statements qualified with the tenant's schema" if sql and all(sql)
                              else "statements are unqualified; the schema comes from search_path" if sql
                              else "the strategy exposes no engine to observe"},
            "raw_text": _judge(pick("raw_text")),
        })
    return rows
