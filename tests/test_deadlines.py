"""The step deadline: a blocked step is stopped, the cell ends with a verdict, the finding says what it waited on."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import text

from harness.checks import check_history, coverage, verdict
from harness.checks.history import (ErrorSeen, History, Holder, RowSeen, StepRecord, Wait, step_from_json,
                                    step_to_json)
from harness.config import resolve_config
from harness.errors import UsageError
from harness.report.explain import explain
from harness.tenancy.strategy import load_strategy
from harness.workload.cell import run_cell
from harness.workload.deadline import Backend, _Due, _match, describe_lock
from harness.workload.hammer import hammer
from harness.workload.program import Program, Request

DEADLINE = 1.0  # seconds: short, so no test here can hang the suite
CANCELED = ErrorSeen("57014", "QueryCanceled", "canceling statement due to user request")


# -- the check, on canned histories ------------------------------------------------------------------
def _blocked_history() -> History:
    wait = Wait(DEADLINE, pid=4243, event="Lock/advisory", lock="advisory lock -1234 (ExclusiveLock)",
                query="SELECT pg_advisory_lock(hashtext('acme'))", seconds=1.02,
                holders=(Holder(4242, "idle", "COMMIT", "", client=0, tenant="acme", step=2),),
                stopped="the harness canceled its statement (pg_cancel_backend(4243))")
    return History("s", "direct", ("acme", "globex"), ("acme", "globex"), steps=[
        StepRecord(1, 0, 0, "acme", "open", "control", pid=4242),
        StepRecord(2, 0, 0, "acme", "orm_select_all", pid=4242, rows=(RowSeen("product", 1, "acme"),)),
        StepRecord(3, 1, 0, "acme", "open", "control", error=CANCELED, waited=wait),
        StepRecord(4, 1, 0, "acme", "orm_select_all", note="skipped: the session did not open"),
    ])


def test_a_stopped_step_is_a_lock_wait_naming_the_lock_and_its_holder_not_an_error():
    history = _blocked_history()
    findings = check_history(history)
    assert [f.kind for f in findings] == ["lock_wait"]  # the cancel's 57014 is not an error finding as well
    finding = findings[0]
    assert finding.steps == (3,) and finding.tenant == "acme" and not finding.isolation
    assert finding.explanation.startswith("step 3 waited more than 1 s on advisory lock -1234 (ExclusiveLock) "
                                          "held by backend 4242 (client 0, tenant 'acme'; idle: COMMIT)")
    assert "client 1's open for tenant 'acme' on backend 4243" in finding.explanation
    assert "its holder is idle outside any transaction: a session-level lock" in finding.explanation
    assert "pg_cancel_backend(4243)" in finding.explanation
    judged = verdict(findings, coverage(history))
    assert judged.verdict.value == "inconclusive"
    assert judged.reason.startswith("step 3 waited more than 1 s on advisory lock -1234")


def test_a_lock_wait_keeps_a_cell_from_passing_even_with_coverage():
    history = _blocked_history()
    history.steps.append(StepRecord(5, 0, 1, "globex", "orm_select_all", pid=4242,
                                    rows=(RowSeen("product", 1, "globex"),)))  # 4242 served two tenants
    cov = coverage(history)
    assert cov.exercised
    assert verdict(check_history(history), cov).verdict.value == "inconclusive"


def test_a_wait_with_no_lock_and_no_backend_says_so():
    history = History("s", "direct", ("acme",), ("acme",), steps=[
        StepRecord(1, 0, 0, "acme", "action:report", "action", waited=Wait(2.0)),
        StepRecord(2, 1, 0, "acme", "orm_select_all", error=CANCELED,
                   waited=Wait(2.0, pid=77, event="", query="SELECT pg_sleep(60)", seconds=2.4))])
    hang, slow = check_history(history)
    assert "no backend of the code under test waited or ran a statement for it" in hang.explanation
    assert "ran \"SELECT pg_sleep(60)\" for 2.4 s" in slow.explanation


def test_what_a_step_waited_on_survives_the_history_file_and_results():
    history = _blocked_history()
    step = history.steps[2]
    assert step_from_json(json.loads(json.dumps(step_to_json(step)))) == step
    again = History.from_json(json.loads(json.dumps(history.to_json())))
    assert again.steps == history.steps
    old_line = {k: v for k, v in step_to_json(history.steps[0]).items() if k != "waited"}  # written before
    assert step_from_json(old_line) == history.steps[0]


def test_an_advisory_key_reads_as_the_application_passed_it():
    def backend(**lock):
        return Backend(1, "app", "", "active", "Lock", "advisory", "", 2.0, [2], **{
            "locktype": None, "mode": "ExclusiveLock", "relation": None, "classid": None, "objid": None,
            "objsubid": None, "xid": None, "page": None, "tuple": None, **lock})

    negative = -123456789  # hashtext() gives negative keys too; pg_locks splits the bigint into two oids
    unsigned = negative & (2 ** 64 - 1)
    assert describe_lock(backend(locktype="advisory", classid=unsigned >> 32, objid=unsigned & 0xFFFFFFFF,
                                 objsubid=1)) == f"advisory lock {negative} (ExclusiveLock)"
    assert describe_lock(backend(locktype="advisory", classid=7, objid=9, objsubid=2)) == \
        "advisory lock (7, 9) (ExclusiveLock)"
    assert describe_lock(backend(locktype="transactionid", xid="812", mode="ShareLock")).startswith(
        "transaction 812 to end")
    assert describe_lock(backend()) == ""


def test_each_due_step_gets_its_own_clients_backend_first_then_the_oldest_wait():
    def waiter(pid, running):
        return Backend(pid, "app", "", "active", "Lock", "advisory", "", running, [1], *([None] * 9))

    first, second, third = (_Due(object(), seq, started, 0, hint)  # type: ignore[arg-type]
                            for seq, started, hint in ((1, 0.0, None), (2, 1.0, 30), (3, 2.0, None)))
    pairs = _match([first, second, third], [waiter(10, 5.0), waiter(30, 9.0)], [])
    assert [(d.seq, b.pid if b else None) for d, b in pairs] == [(1, 10), (2, 30), (3, None)]


def test_the_step_deadline_is_a_setting_with_a_floor():
    assert resolve_config({}, env={}).step_deadline == 10.0
    assert resolve_config({}, env={"HARNESS_STEP_DEADLINE": "2.5"}).step_deadline == 2.5
    with pytest.raises(UsageError, match="at least 0.1"):
        resolve_config({"step_deadline": "0.01"}, env={})


# -- real servers ---------------------------------------------------------------------------------------
SAME_TENANT = Program((
    (Request("acme", ("orm_select_all", "commit")), Request("globex", ("orm_select_all", "commit"))),
    (Request("acme", ("orm_select_all", "commit")),),
    # client 0 opens, reads and commits; client 1 opens for the same tenant while client 0's request is open
), schedule=(0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0))


GUARD = 15 * DEADLINE  # a statement of the code under test running this long means the deadline failed


@pytest.fixture
def short_deadline(stack, tenancy, monkeypatch):
    """The tenancy with a short step deadline, and a guard: should the deadline fail to stop a step, the
    guard terminates the stuck backend, so the test fails on its assertions instead of hanging."""
    monkeypatch.setattr(tenancy, "step_deadline", DEADLINE)
    done = threading.Event()
    stuck = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role "
                 "AND state = 'active' AND query_start < clock_timestamp() - make_interval(secs => :age)")

    def guard() -> None:
        while not done.wait(0.5):
            with tenancy.engine.connect() as conn:
                conn.execute(stuck, {"role": stack.app_role, "age": GUARD})
                conn.commit()

    thread = threading.Thread(target=guard, name="test-guard", daemon=True)
    thread.start()
    yield tenancy
    done.set()
    thread.join(10)


def _watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "step-deadline"]


@pytest.mark.parametrize("route", ["direct", "session"])
def test_a_request_blocked_by_another_requests_lock_ends_with_a_lock_wait(stack, short_deadline, route):
    started = time.monotonic()
    result = run_cell(stack, short_deadline, load_strategy("blocking_strategies:SessionLock"), route,
                      "lock_wait", SAME_TENANT)
    assert time.monotonic() - started < 10 * DEADLINE, "the blocked step was not stopped in time"
    waits = [f for f in result.findings if f.kind == "lock_wait"]
    assert len(waits) == 1 and result.verdict.value == "inconclusive", explain(result)
    assert {f.kind for f in result.findings} == {"lock_wait"}, explain(result)
    steps = {s.seq: s for s in result.history.steps}
    blocked = steps[waits[0].steps[0]]
    holder_pid = steps[1].pid  # client 0's open, which took the lock
    with short_deadline.engine.connect() as conn:
        key = conn.execute(text("SELECT hashtext('acme')::bigint")).scalar()
    assert (blocked.client, blocked.step) == (1, "open") and blocked.error.sqlstate == "57014"
    assert blocked.waited.lock == f"advisory lock {key} (ExclusiveLock)"
    assert [(h.pid, h.client, h.tenant) for h in blocked.waited.holders] == [(holder_pid, 0, "acme")]
    assert waits[0].explanation.startswith(f"step {blocked.seq} waited more than 1 s on advisory lock {key} "
                                           f"(ExclusiveLock) held by backend {holder_pid} (client 0, tenant 'acme'")
    assert result.reason.startswith(f"step {blocked.seq} waited more than 1 s on advisory lock {key}")
    assert not _watchdog_threads()  # the cell's watchdog stopped with its runner


@pytest.mark.parametrize("route", ["direct", "session"])
def test_the_twin_with_a_transaction_lock_passes(stack, short_deadline, route):
    result = run_cell(stack, short_deadline, load_strategy("blocking_strategies:XactLock"), route, "lock_wait",
                      SAME_TENANT)
    assert not result.findings and result.verdict.value == "pass", explain(result)


def test_a_statement_that_runs_past_the_deadline_is_canceled_and_named(stack, short_deadline):
    program = Program(((Request("acme", ("orm_select_all",)),), (Request("globex", ("orm_select_all",)),)))
    started = time.monotonic()
    result = run_cell(stack, short_deadline, load_strategy("blocking_strategies:SlowOpen"), "direct", "slow",
                      program)
    assert time.monotonic() - started < 10 * DEADLINE, "the slow statements were not stopped in time"
    waits = [f for f in result.findings if f.kind == "lock_wait"]
    assert len(waits) == 2 and result.verdict.value == "inconclusive", explain(result)
    assert all("ran \"SELECT pg_sleep(60)\" for" in f.explanation and "pg_cancel_backend" in f.explanation
               for f in waits), explain(result)


def test_a_hammer_thread_stuck_on_a_leaked_lock_is_stopped_and_the_run_gets_a_verdict(stack, short_deadline,
                                                                                      tmp_path):
    started = time.monotonic()
    result, run = hammer(stack, short_deadline, load_strategy("blocking_strategies:LeakedLock"), "direct",
                         threads=3, max_requests=400, max_seconds=4, seed=3, history_path=tmp_path / "h.jsonl")
    assert time.monotonic() - started < 4 + 20 * DEADLINE
    # The leaked locks are also pool pollution (an isolation finding: fail); the threads' blocked steps are
    # lock waits, and the run ends with a verdict instead of giving up on the threads.
    waits = [f for f in result.findings if f.kind == "lock_wait"]
    assert waits and result.verdict.value != "pass", explain(result)
    assert any("on advisory lock" in f.explanation and "held by backend" in f.explanation
               and "pg_cancel_backend" in f.explanation for f in waits), explain(result)
    assert not _watchdog_threads()


def test_a_hammer_thread_stuck_in_python_is_given_up_on_with_its_step_recorded(stack, short_deadline, tmp_path,
                                                                               monkeypatch):
    import blocking_strategies
    from harness.workload import hammer as hammer_module

    monkeypatch.setattr(hammer_module, "STUCK_GRACE", 0.5)
    started = time.monotonic()
    try:
        result, _ = hammer(stack, short_deadline, load_strategy("blocking_strategies:PythonHang"), "direct",
                           threads=2, max_requests=10, max_seconds=1, seed=1, history_path=tmp_path / "h.jsonl")
    finally:
        blocking_strategies.RELEASE.set()  # the abandoned threads fail their open and end
    assert time.monotonic() - started < 1 + 0.5 + 2 * DEADLINE + 5
    waits = [f for f in result.findings if f.kind == "lock_wait"]
    assert len(waits) == 2 and result.verdict.value == "inconclusive", explain(result)
    assert all("no backend of the code under test waited or ran a statement for it" in f.explanation
               and "the hammer gave up on its thread after" in f.explanation for f in waits), explain(result)
    assert {s.step for s in result.history.steps if s.waited} == {"open"}
