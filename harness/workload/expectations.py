"""The expectation table of the built-in strategies (harness/tenancy/strategies/expectations.toml).

A strategy's entries hold on every deployment unless a ``[strategy.when.<condition>]`` section turns some
of them where a condition of the deployment holds (:data:`harness.deployments.CONDITIONS`): its keys are
scenarios, or ``"*"`` for every scenario of the strategy, each with the routes it turns and the reason.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from harness.checks.verdict import Verdict
from harness.deployments import CONDITIONS, DeploymentFacts
from harness.stack import ROUTES

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "tenancy" / "strategies" / "expectations.toml"


@dataclasses.dataclass(frozen=True)
class Expectation:
    verdict: Verdict
    reason: str
    #: other verdicts that match too (``"pass|inconclusive"`` in the table): for a cell whose outcome depends
    #: on the draw in a way the harness cannot steer, and whose reason says how
    also: tuple[Verdict, ...] = ()
    #: the deployment condition that turned this entry ("" for the entry that holds everywhere)
    when: str = ""

    def allows(self, verdict: Verdict) -> bool:
        return verdict == self.verdict or verdict in self.also

    @property
    def label(self) -> str:
        return "|".join(v.value for v in (self.verdict, *self.also))


Key = tuple[str, str, str]  # (strategy, scenario, route)


@dataclasses.dataclass(frozen=True)
class ExpectationTable:
    #: what holds on every deployment
    base: dict[Key, Expectation]
    #: condition -> the entries it turns, in the order of :data:`CONDITIONS`
    when: dict[str, dict[Key, Expectation]]

    def lookup(self, key: Key, facts: DeploymentFacts | None) -> Expectation | None:
        found = self.base.get(key)
        if facts is not None:
            for name, entries in self.when.items():
                if key in entries and CONDITIONS[name].holds(facts):
                    found = entries[key]
        return found

    def knows(self, key: Key) -> bool:
        return key in self.base


def _verdicts(value: object, where: str) -> tuple[Verdict, tuple[Verdict, ...]]:
    verdicts = str(value).split("|")
    if value is None or any(v not in tuple(Verdict) for v in verdicts):
        raise ValueError(f"{where}: {value!r} is not a verdict (or verdicts joined by |)")
    return Verdict(verdicts[0]), tuple(Verdict(v) for v in verdicts[1:])


def _entry(path: Path, where: str, entry: dict) -> str:
    reason = str(entry.get("reason", "")).strip()
    if not reason:
        raise ValueError(f"{path}: {where} has no reason")
    return reason


def load_table(path: Path = DEFAULT_PATH) -> ExpectationTable:
    """The whole table; a malformed entry raises ValueError."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    base: dict[Key, Expectation] = {}
    when: dict[str, dict[Key, Expectation]] = {name: {} for name in CONDITIONS}
    for strategy, scenarios in data.items():
        conditions = scenarios.get("when", {})
        for scenario, entry in scenarios.items():
            if scenario == "when":
                continue
            where = f"{strategy}.{scenario}"
            reason = _entry(path, where, entry)
            for route in ROUTES:
                verdict, also = _verdicts(entry.get(route, entry.get("verdict")), f"{path}: {where} ({route})")
                base[(strategy, scenario, route)] = Expectation(verdict, reason, also)
        for condition, entries in conditions.items():
            if condition not in CONDITIONS:
                raise ValueError(f"{path}: {strategy}.when.{condition}: no such condition "
                                 f"(known: {', '.join(CONDITIONS)})")
            for scenario, entry in entries.items():
                where = f"{strategy}.when.{condition}.{scenario}"
                reason = _entry(path, where, entry)
                targets = [s for s in scenarios if s != "when"] if scenario == "*" else [scenario]
                if scenario not in scenarios and scenario != "*":
                    raise ValueError(f"{path}: {where}: {strategy} has no entry for {scenario}")
                routes = [route for route in ROUTES if route in entry]
                if not routes:
                    raise ValueError(f"{path}: {where} names no route ({', '.join(ROUTES)})")
                for target in targets:
                    for route in routes:
                        verdict, also = _verdicts(entry[route], f"{path}: {where} ({route})")
                        when[condition][(strategy, target, route)] = Expectation(verdict, reason, also, condition)
    return ExpectationTable(base, when)


def load_expectations(path: Path = DEFAULT_PATH) -> dict[Key, Expectation]:
    """{(strategy, scenario, route): Expectation} that holds on every deployment."""
    return load_table(path).base


#: scenarios whose programs are generated programs' (with real threads, with faults)
DERIVED = ("hammer", "faults")
USER_REQUIREMENT = Expectation(Verdict.PASS, "a gated strategy must pass every scenario on every route it runs on")
_TABLE: ExpectationTable | None = None


def required_verdict(strategy: str, scenario: str, route: str, *, gate: bool = False,
                     facts: DeploymentFacts | None = None) -> Expectation:
    """What a cell must measure: ``pass`` when gating (strategies named by the user, built-in
    names included) or for a strategy the table does not know; else the table's entry for the deployment
    ``facts`` describe (without facts: the entry that holds everywhere)."""
    global _TABLE
    if gate:
        return USER_REQUIREMENT
    if _TABLE is None:
        _TABLE = load_table()
    # The hammer runs the same request shapes as generated programs, with real threads; the faults scenario
    # runs them with faults. Without an entry of their own, they are required to measure what generated does.
    if scenario in DERIVED and not _TABLE.knows((strategy, scenario, route)):
        scenario = "generated"
    return _TABLE.lookup((strategy, scenario, route), facts) or USER_REQUIREMENT
