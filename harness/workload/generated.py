"""Generated programs: Hypothesis draws concurrent workloads and shrinks failures.

Choice: a program is drawn as one *value* (clients, requests, steps and the
interleaving) by a composite strategy, and run by the same deterministic runner
as the named scenarios; not as a ``RuleBasedStateMachine``. A value prints as a
program a person can read and paste, replays exactly (the runner executes one
action at a time in the drawn order), shrinks structurally (fewer clients,
requests and steps; the interleaving towards "first client first"), and the
database is reset before every example, which ``@given`` makes natural. A
state machine would interleave drawing with executing, so the interleaving
would exist only implicitly in its rule order.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, seed as hypothesis_seed, settings, strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Flaky

from harness.checks import Coverage, Judgement, Verdict
from harness.checks.verdict import POOLER_BROKE, STRUCTURAL
from harness.checks.steps import drawable
from harness.stack import Stack
from harness.team import steps as team_steps
from harness.tenancy.provisioning import Tenancy
from harness.tenancy.strategy import StrategySpec
from harness.workload.cell import CellResult, run_cell
from harness.workload.program import Program, Request, step_count

MAX_CLIENTS = 6
MAX_REQUESTS = 2
MAX_STEPS = 4


@dataclasses.dataclass(frozen=True)
class Profile:
    """How hard the generated-programs scenario searches."""

    name: str
    max_examples: int
    hammer_requests: int
    hammer_seconds: float


PROFILES = {p.name: p for p in (
    Profile("dev", max_examples=8, hammer_requests=100, hammer_seconds=5),
    Profile("ci", max_examples=40, hammer_requests=300, hammer_seconds=10),
    Profile("nightly", max_examples=400, hammer_requests=20000, hammer_seconds=180),
)}


def requests_of(tenants: tuple[str, ...], steps: tuple[str, ...],
                team: tuple[str, ...] = (), faults: tuple[str, ...] = ()) -> st.SearchStrategy[Request]:
    """Requests of up to MAX_STEPS steps. With the team's steps (``team``), the built-in steps, the team's
    table steps and its actions are drawn about equally often: the run is there to test the team's app,
    whose steps would otherwise be a few among many. With ``faults``, a request may also meet one fault, at
    any point of it (shrinking towards none): its other steps are drawn as without faults, so the faults
    scenario finds what generated programs find, and what only a fault shows."""
    groups = [group for group in (steps, *team_steps.groups(team)) if group]
    step = st.one_of(*(st.sampled_from(group) for group in groups))
    drawn = st.lists(step, max_size=MAX_STEPS).map(tuple)
    if faults:
        drawn = st.tuples(drawn, st.none() | st.tuples(st.integers(0, MAX_STEPS), st.sampled_from(faults))).map(
            lambda pair: pair[0] if pair[1] is None else
            pair[0][:pair[1][0]] + (pair[1][1],) + pair[0][pair[1][0]:])
    return st.builds(Request, st.sampled_from(tenants), drawn)


@st.composite
def programs(draw: Any, tenants: tuple[str, ...], probe: str = "end", layout: str | None = None,
             team: tuple[str, ...] = (), faults: tuple[str, ...] = ()) -> Program:
    """2 to 6 clients, each with up to 3 requests for tenants of the set, and an interleaving.

    The interleaving is drawn as "which of the clients that still have actions
    goes next", an index that shrinks towards 0: towards running the clients
    one after the other.
    """
    builtin = drawable(layout=layout)
    teams = drawable(layout=layout, team=team)[len(builtin):]  # the team's steps this layout allows
    clients = draw(st.lists(st.lists(requests_of(tenants, builtin, teams, faults), max_size=MAX_REQUESTS).map(tuple),
                            min_size=2, max_size=MAX_CLIENTS).map(tuple))
    remaining = [sum(len(r.actions()) for r in requests) for requests in clients]
    schedule: list[int] = []
    while any(remaining):
        active = [c for c, left in enumerate(remaining) if left]
        chosen = active[draw(st.integers(0, len(active) - 1))] if len(active) > 1 else active[0]
        schedule.append(chosen)
        remaining[chosen] -= 1
    return Program(clients, tuple(schedule), probe=probe)


class _Counterexample(AssertionError):
    """A generated program broke isolation; raised for Hypothesis to shrink."""


@dataclasses.dataclass
class Exploration:
    """What one strategy x route search saw."""

    examples: int = 0
    seconds_to_first_failure: float | None = None
    examples_to_first_failure: int | None = None
    errors: int = 0
    steps: int = 0
    backends: int = 0
    shared_backends: int = 0
    probed: int = 0
    last: CellResult | None = None
    last_failure: CellResult | None = None
    failing_program: Program | None = None
    stuck: CellResult | None = None  # the first example with a step the step deadline stopped
    erred: CellResult | None = None  # the first example with an error: the evidence of an inconclusive search
    cannot_run: CellResult | None = None  # the first example in which every connection was refused
    #: examples whose every failure was a prepared-statement error on a pooled route, and the first of them
    pooler_broke: int = 0
    pooler_broke_first: CellResult | None = None
    runnable: int = 0  # examples in which a step reached a backend
    structural: int = 0  # examples over two or more tenants on pools no two tenants shared
    #: examples over two or more tenants that reached a backend, on a pool two tenants shared (or unseen)
    not_structural: int = 0
    faults: dict[str, int] = dataclasses.field(default_factory=dict)  # faults injected, by kind


def explore(stack: Stack, tenancy: Tenancy, spec: StrategySpec, route: str, profile: Profile, *,
            seed: int | None = None, derandomize: bool = False, database_dir: Path | None = None,
            scenario: str = "generated", faults: tuple[str, ...] = ()) -> tuple[CellResult, Exploration]:
    """Search generated programs for an isolation failure; shrink the first one found. With ``faults``,
    the programs interleave those fault steps too."""
    seen = Exploration()
    started = time.monotonic()

    @settings(max_examples=profile.max_examples, deadline=None, derandomize=derandomize,
              database=DirectoryBasedExampleDatabase(str(database_dir)) if database_dir and not derandomize else None,
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False,
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
    @given(programs(tenancy.tenants, layout=spec.layout(stack.url(route)), team=team_steps.step_names(tenancy.team),
                    faults=faults))
    def isolation_holds(program: Program) -> None:
        result = run_cell(stack, tenancy, spec, route, scenario, program)
        seen.examples += 1
        seen.last = result
        seen.steps += result.coverage.steps
        seen.backends += result.coverage.backends
        seen.shared_backends += result.coverage.shared_backends
        seen.probed += result.coverage.probed_connections
        errors = sum(1 for f in result.findings if f.kind == "error" and f.gating)
        if result.coverage.pooler_broke:  # the pooler's doing, not an error that stopped the search
            seen.pooler_broke += 1
            seen.pooler_broke_first = seen.pooler_broke_first or result
            errors = 0
        seen.errors += errors
        if errors and seen.erred is None:
            seen.erred = result
        if seen.stuck is None and any(f.kind == "lock_wait" for f in result.findings):
            seen.stuck = result
        if result.verdict is Verdict.CANNOT_RUN:
            seen.cannot_run = seen.cannot_run or result
        seen.runnable += result.coverage.backends > 0
        for name, count in result.coverage.faults:
            seen.faults[name] = seen.faults.get(name, 0) + count
        seen.structural += result.coverage.structural
        seen.not_structural += (result.coverage.tenants > 1 and result.coverage.backends > 0
                                and not result.coverage.structural)
        if result.verdict is Verdict.FAIL:
            if seen.seconds_to_first_failure is None:
                seen.seconds_to_first_failure = time.monotonic() - started
                seen.examples_to_first_failure = seen.examples
            seen.last_failure = result
            seen.failing_program = program
            raise _Counterexample(result.reason)

    # One example-database key per strategy x route: otherwise a sound cell replays
    # (and deletes) the failures an unsound one saved.
    isolation_holds.hypothesis.inner_test._hypothesis_internal_add_digest = (  # type: ignore[attr-defined]
        f"{spec.spec}|{route}|{'|'.join(tenancy.tenants)}{'|faults' if faults else ''}".encode())
    test = isolation_holds if seed is None else hypothesis_seed(seed)(isolation_holds)
    failed = False
    flaky = False
    try:
        test()
    except _Counterexample:
        failed = True
    except Flaky:
        failed = flaky = True
    seconds = time.monotonic() - started
    structural = seen.structural > 0 and not seen.not_structural
    cov = Coverage(steps=seen.steps, backends=seen.backends, shared_backends=seen.shared_backends,
                   tenants=len(tenancy.tenants), probed_connections=seen.probed, separate_pools=structural,
                   faults=tuple(sorted(seen.faults.items())))
    if failed and seen.last_failure is not None:
        final = seen.last_failure
        # In the unit the timeline shows: every recorded step (the frames and each step of a scheduler
        # pass), then the program's own steps (a scheduler pass is one of those).
        recorded, program = len(final.history.steps), step_count(seen.failing_program)
        reason = (f"{final.reason}; shrunk to {recorded} recorded step{'s' * (recorded != 1)} "
                  f"({program} program step{'s' * (program != 1)}) after {seen.examples} example(s)"
                  + (" (flaky on replay)" if flaky else ""))
        judged = Judgement(Verdict.FAIL, reason)
    elif seen.cannot_run is not None and not seen.runnable:
        final = seen.cannot_run
        judged = Judgement(Verdict.CANNOT_RUN, f"{final.reason} (no step of {seen.examples} examples reached a backend)")
    elif seen.pooler_broke and not seen.errors and seen.stuck is None:
        final = seen.pooler_broke_first
        judged = Judgement(Verdict.CANNOT_RUN, f"{POOLER_BROKE} in {seen.pooler_broke} of {seen.examples} examples; "
                                               f"the first example: {final.coverage.pooler_broke}")
    elif seen.stuck is not None:  # a blocked step is the first thing to say, with its example's evidence
        final = seen.stuck
        judged = Judgement(Verdict.INCONCLUSIVE, f"{final.reason} (in one of {seen.examples} examples)")
    elif seen.errors:
        final = seen.erred or seen.last
        judged = Judgement(Verdict.INCONCLUSIVE, f"{seen.errors} error(s) in {seen.examples} examples; the first: "
                                                 + next((f.explanation for f in final.findings if f.kind == "error"), ""))
    elif faults and not seen.faults:
        final, judged = seen.last, Judgement(Verdict.INCONCLUSIVE, f"no fault was injected in {seen.examples} examples")
    elif cov.structural:
        final, judged = seen.last, Judgement(Verdict.PASS, f"{STRUCTURAL} (in every example that reached a "
                                                           f"backend for two or more tenants); {seen.examples} examples; {cov.describe()}")
    elif not cov.exercised:
        final, judged = seen.last, Judgement(Verdict.INCONCLUSIVE, f"no backend served two tenants in {seen.examples} examples")
    else:
        final, judged = seen.last, Judgement(Verdict.PASS, f"{seen.examples} examples; {cov.describe()}")
    assert final is not None
    result = CellResult(spec.name, route, scenario, final.history, final.findings, cov, judged.verdict,
                        judged.reason, seconds)
    result.program = seen.failing_program if failed else None
    result.driver_used = final.driver_used
    return result, seen
