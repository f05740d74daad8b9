"""The expectation table of the built-in strategies (harness/tenancy/strategies/expectations.toml)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from harness.checks.verdict import Verdict
from harness.stack import ROUTES

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "tenancy" / "strategies" / "expectations.toml"


@dataclasses.dataclass(frozen=True)
class Expectation:
    verdict: Verdict
    reason: str
    #: other verdicts that match too (``"pass|inconclusive"`` in the table): for a cell whose outcome depends
    #: on the draw in a way the harness cannot steer, and whose reason says how
    also: tuple[Verdict, ...] = ()

    def allows(self, verdict: Verdict) -> bool:
        return verdict == self.verdict or verdict in self.also

    @property
    def label(self) -> str:
        return "|".join(v.value for v in (self.verdict, *self.also))


def load_expectations(path: Path = DEFAULT_PATH) -> dict[tuple[str, str, str], Expectation]:
    """{(strategy, scenario, route): Expectation}; a malformed entry raises ValueError."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    table: dict[tuple[str, str, str], Expectation] = {}
    for strategy, scenarios in data.items():
        for scenario, entry in scenarios.items():
            reason = entry.get("reason", "").strip()
            if not reason:
                raise ValueError(f"{path}: {strategy}.{scenario} has no reason")
            for route in ROUTES:
                value = entry.get(route, entry.get("verdict"))
                verdicts = str(value).split("|")
                if value is None or any(v not in tuple(Verdict) for v in verdicts):
                    raise ValueError(f"{path}: {strategy}.{scenario} has no valid verdict for {route}: {value!r}")
                table[(strategy, scenario, route)] = Expectation(Verdict(verdicts[0]), reason,
                                                                 tuple(Verdict(v) for v in verdicts[1:]))
    return table


#: scenarios whose programs are generated programs' (with real threads, with faults)
DERIVED = ("hammer", "faults")
USER_REQUIREMENT = Expectation(Verdict.PASS, "a gated strategy must pass every scenario on every route it runs on")
_TABLE: dict[tuple[str, str, str], Expectation] | None = None


def required_verdict(strategy: str, scenario: str, route: str, *, gate: bool = False) -> Expectation:
    """What a cell must measure: ``pass`` when gating (strategies named by the user, built-in
    names included) or for a strategy the table does not know; else the table's entry."""
    global _TABLE
    if gate:
        return USER_REQUIREMENT
    if _TABLE is None:
        _TABLE = load_expectations()
    # The hammer runs the same request shapes as generated programs, with real threads; the faults scenario
    # runs them with faults. Without an entry of their own, they are required to measure what generated does.
    if scenario in DERIVED and (strategy, scenario, route) not in _TABLE:
        scenario = "generated"
    return _TABLE.get((strategy, scenario, route), USER_REQUIREMENT)
