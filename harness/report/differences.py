"""Verdicts that differ between deployments or drivers: the cells of a ``--deployments`` or ``--drivers`` run
that measured one verdict on one deployment (or driver, or deployment/driver pair: a cell's ``variant``) and
another verdict on another. A Measured's ``deployment`` is that variant's label.

A difference is data (:class:`Difference`); results.json holds it as :meth:`Difference.as_json` and the page
shows it at the top. The same cell measured alike on every deployment is no difference; a cell measured on
one deployment only is compared with nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from harness.deployments import CONDITIONS
from harness.workload.cell import CellResult


@dataclasses.dataclass(frozen=True)
class Measured:
    """What one cell measured on one deployment."""

    deployment: str
    verdict: str
    reason: str  # the verdict's reason (the cell's)
    #: the deployment condition that turned the cell's expected verdict ("" for the entry that holds everywhere)
    when: str = ""

    @property
    def condition(self) -> str:
        """The condition's sentence (:data:`harness.deployments.CONDITIONS`), "" without one."""
        return CONDITIONS[self.when].means if self.when in CONDITIONS else ""


@dataclasses.dataclass(frozen=True)
class Difference:
    strategy: str
    route: str
    scenario: str
    measured: tuple[Measured, ...]  # one per deployment, in run order

    def as_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "route": self.route, "scenario": self.scenario,
                "deployments": [{**dataclasses.asdict(m), "condition": m.condition} for m in self.measured]}


Key = tuple[str, str, str]  # (strategy, route, scenario)


def _differences(measured: Iterable[tuple[Key, Measured]]) -> list[Difference]:
    by_cell: dict[Key, list[Measured]] = {}
    for key, m in measured:
        by_cell.setdefault(key, []).append(m)
    return [Difference(*key, tuple(ms)) for key, ms in by_cell.items()
            if len(ms) > 1 and len({m.verdict for m in ms}) > 1]


def deployment_differences(cells: Iterable[CellResult]) -> list[Difference]:
    """Every strategy x route x scenario measured on two deployments or more whose verdicts differ, in the
    order the cells ran (cells without a deployment are compared with nothing: an ordinary run has none)."""
    return _differences(((c.strategy, c.route, c.scenario),
                         Measured(c.column, c.verdict.value, c.reason, c.required.when if c.required else ""))
                        for c in cells if c.column is not None)


def differences_json(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same, from results.json's cells (a merged report recomputes them from its shards' cells)."""
    return [d.as_json() for d in _differences(
        ((c["strategy"], c["route"], c["scenario"]),
         Measured((c.get("variant") or c.get("deployment")), c["verdict"], c["verdict_reason"],
                  c.get("required_when") or ""))
        for c in cells if (c.get("variant") or c.get("deployment")) is not None)]
