"""pool_pollution: state a request left on a connection that the next request will get."""

from __future__ import annotations

from typing import Iterable

from harness.checks.findings import Finding
from harness.checks.history import ConnectionState, History, ProbeRecord, StepRecord
from harness.checks.leftovers import SetterIndex, who

#: ``after_step`` of a probe taken once every thread had ended its requests (the hammer's): no step of the
#: history comes right before it, so the finding names the last request seen on the polluted backend instead.
AFTER_THE_RUN = 0


def check_pool_pollution(history: History) -> list[Finding]:
    findings = []
    last_on = _last_steps_on(history, {s.pid for p in history.probes if p.after_step == AFTER_THE_RUN
                                       for s in p.states if s.leftovers_for(p.owner)})
    steps_on = _steps_on(history, {s.pid for p in history.probes if p.after_step != AFTER_THE_RUN
                                   for s in p.states if s.leftovers_for(p.owner)})
    setters = _setters(history, any(s.leftovers_for(p.owner) for p in history.probes for s in p.states))
    for probe in history.probes:
        if probe.error:
            findings.append(Finding("error", f"probe {probe.seq} of {probe.target} {_when(probe)} failed: "
                                             f"{probe.error}", (probe.after_step,)))
            continue
        seen: set[int] = set()
        for state in probe.states:
            leftovers = state.leftovers_for(probe.owner)
            if leftovers and state.pid not in seen:
                seen.add(state.pid)
                if probe.after_step == AFTER_THE_RUN:
                    ended, steps = _ended_by(last_on.get(state.pid), state.pid)
                else:
                    ended, steps = f"after step {probe.after_step} ended a request", (probe.after_step,)
                setter = _set_by(setters, probe, state)
                findings.append(Finding(
                    "pool_pollution",
                    f"{ended}, {probe.target} connection on backend {state.pid} still carried "
                    f"{'; '.join(leftovers)}{_left_by(probe, steps_on.get(state.pid, ()))}"
                    + (f"; {who(setter[0])} set that search_path ({setter[1]})" if setter else "") + ".",
                    steps + ((setter[0].seq,) if setter and setter[0].seq not in steps else ()),
                    left_by=setter[0].seq if setter else None))
    return findings


def _setters(history: History, needed: bool) -> SetterIndex:
    """The steps that set session state, by backend (one pass over the steps, only when a probe found some)."""
    setters = SetterIndex()
    if needed:
        for step in history.steps:
            setters.feed(step)
    return setters


def _set_by(setters: SetterIndex, probe: ProbeRecord, state: ConnectionState) -> tuple[StepRecord, str] | None:
    """The step that set the search_path the probe found (the last one set on that backend before the probe,
    when it is that very path), and its statement."""
    if "search_path" not in state.kinds():
        return None
    before = probe.after_step + 1 if probe.after_step != AFTER_THE_RUN else float("inf")
    found = setters.last_before(state.pid, before)
    if found is None or found[1].search_path != state.search_path:
        return None
    return found[0], found[1].statement


def _steps_on(history: History, pids: set[int]) -> dict[int, list[StepRecord]]:
    """The recorded steps on each of ``pids``, in order."""
    found: dict[int, list[StepRecord]] = {}
    if pids:
        for step in history.steps:
            if step.pid in pids:
                found.setdefault(step.pid, []).append(step)
    return found


def _left_by(probe: ProbeRecord, steps: Iterable[StepRecord]) -> str:
    """The request that most likely left the state: the last one before the probe whose step ran on that
    backend (steps record the backend of their reads only)."""
    before = [s for s in steps if s.seq <= probe.after_step]
    if probe.after_step == AFTER_THE_RUN or not before:
        return ""
    step = max(before, key=lambda s: s.seq)
    return (f" (the last request seen on it: client {step.client}'s request {step.request} for {step.tenant!r}, "
            f"step {step.seq} {step.step})")


def _when(probe: ProbeRecord) -> str:
    return "after every thread ended its requests" if probe.after_step == AFTER_THE_RUN \
        else f"after step {probe.after_step}"


def _last_steps_on(history: History, pids: set[int]) -> dict[int, StepRecord]:
    """The last recorded step on each of ``pids`` (one pass; a hammer's steps are streamed from its file)."""
    last: dict[int, StepRecord] = {}
    if pids:
        for step in history.steps:
            if step.pid in pids and (step.pid not in last or step.seq > last[step.pid].seq):
                last[step.pid] = step
    return last


def _ended_by(step: StepRecord | None, pid: int) -> tuple[str, tuple[int, ...]]:
    """Who ended the request that left a backend polluted, in a history of threads (the hammer's)."""
    if step is None:
        return (f"after every thread ended its requests (no recorded step names backend {pid}: "
                "steps record the backend of their reads only)", ())
    return (f"after request {step.request} of thread {step.client} ended (for {step.tenant!r}; the last request "
            f"seen on backend {pid}, at step {step.seq}, {step.step})", (step.seq,))
