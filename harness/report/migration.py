"""The migration's before/after comparison, rebuilt from the run's measurements.

One row per strategy; each column is derived from verdicts of this run, never
asserted: "yes" when every measured cell behind it passed, "no" when one
failed (with where), "?" when nothing was measured. The PgBouncer columns
count against the pooler only what fails on its route and passed on direct
(or was not measured there): "as direct" when everything failing there fails
on direct too.

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


LISTED = 6  # places a detail names before "and N more"


def _places(cells: list[dict[str, Any]]) -> str:
    places = sorted({f"{c['scenario']}@{c['route']}" for c in cells})
    more = f" and {len(places) - LISTED} more" if len(places) > LISTED else ""
    return ", ".join(places[:LISTED]) + more


def _judge(cells: list[dict[str, Any]]) -> dict[str, Any]:
    if not cells:
        return {"value": "?", "detail": "not measured"}
    failing = [c for c in cells if c["verdict"] != Verdict.PASS]
    if not failing:
        return {"value": "yes", "detail": f"{len(cells)} cell(s) passed"}
    return {"value": "no", "detail": f"{len(failing)} of {len(cells)} cell(s) not passed: {_places(failing)}"}


def _judge_route(cells: list[dict[str, Any]], direct: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    """A pooled route's column: only what fails there and not on direct is the pooler's. The same
    scenario failing on direct is the layer's own failure (the other columns show it)."""
    if not cells:
        return {"value": "?", "detail": "not measured"}
    failing = [c for c in cells if c["verdict"] != Verdict.PASS]
    unknown = [c for c in failing if _where(c) not in direct]
    layers = [c for c in failing if c not in unknown and direct[_where(c)]["verdict"] != Verdict.PASS]
    poolers = [c for c in failing if c not in unknown and c not in layers]
    parts = [f"{len(cells) - len(failing)} of {len(cells)} cell(s) passed"]
    if poolers:
        parts.append(f"{len(poolers)} not passed here but passed on direct: {_places(poolers)}")
    if unknown:
        parts.append(f"{len(unknown)} not passed here, not measured on direct: {_places(unknown)}")
    if layers:
        parts.append(f"{len(layers)} not passed on direct either (the layer's, not the pooler's): {_places(layers)}")
    # "as direct": whatever fails here fails on direct too; the pooler adds no failure of its own.
    return {"value": "no" if poolers or unknown else "as direct" if layers else "yes", "detail": "; ".join(parts)}


def _where(cell: dict[str, Any]) -> tuple:
    """A cell's place apart from its route: the same place on direct is its comparison."""
    return cell.get("deployment"), cell["scenario"]


def _schema_in_sql(layout: str, measured: list[bool]) -> dict[str, Any]:
    if layout == "rls":
        # No tenant schema exists: statements name the shared tables, and the policies choose the rows by
        # the tenant the session carries (a setting such as app.tenant_id, or a role).
        return {"value": "n/a", "detail": "row-level security: one shared table per model; policies choose the "
                                          "tenant's rows by a setting or role the session carries, not by "
                                          "schema or search_path"}
    if not measured:
        return {"value": "?", "detail": "the strategy exposes no engine to observe"}
    if all(measured):
        return {"value": "yes", "detail": "ORM statements qualified with the tenant's schema"}
    return {"value": "no", "detail": "statements are unqualified; the schema comes from search_path"}


def migration_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy, in the order the strategies first appear among the cells."""
    rows = []
    for strategy in dict.fromkeys(c["strategy"] for c in cells):
        mine = [c for c in cells if c["strategy"] == strategy]

        def pick(scenario: str | None = None, route: str | None = None) -> list[dict[str, Any]]:
            return [c for c in mine if (scenario is None or c["scenario"] == scenario)
                    and (route is None or c["route"] == route)]

        sql = [c["schema_in_sql"] for c in pick("fresh_session") if c.get("schema_in_sql") is not None]
        direct = {_where(c): c for c in pick(route="direct")}
        rows.append({
            "strategy": strategy,
            "layout": mine[0]["layout"],
            "survives_commit": _judge(pick("after_commit")),
            "survives_rollback": _judge(pick("after_rollback")),
            "transaction_mode": _judge_route(pick(route="transaction"), direct),
            "session_mode": _judge_route(pick(route="session"), direct),
            "hostile_names": _judge(pick("hostile_names")),
            "schema_in_sql": _schema_in_sql(mine[0]["layout"], sql),
            "raw_text": _judge(pick("raw_text")),
        })
    return rows
