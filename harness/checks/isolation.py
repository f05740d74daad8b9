"""Checks over single steps: what a step read, and how it failed."""

from __future__ import annotations

from harness.checks.faults import expected_under_faults
from harness.checks.findings import Finding
from harness.tenancy.tenants import needs_quoting
from harness.checks.history import History, StepRecord
from harness.checks.refusals import is_name_refusal, is_prepared_statement_error
from harness.checks.steps import step_kind

UNDEFINED_TABLE = "42P01"
INSUFFICIENT_PRIVILEGE = "42501"
# What a tenant name that was not quoted properly tends to produce.
IDENTIFIER_SQLSTATES = {
    "42601": "a syntax error",
    "3F000": "an invalid schema name",
    "42602": "an invalid name",
    "22023": "an invalid search_path value",
}


def _who(step: StepRecord) -> str:
    where = f" on backend {step.pid}" if step.pid else ""
    return f"step {step.seq} (client {step.client}, tenant {step.tenant!r}, {step.step}{where})"


def _gating(history: History, step: StepRecord) -> bool:
    return step.style in history.gating_styles


def check_cross_tenant_reads(history: History) -> list[Finding]:
    findings = []
    for step in history.steps:
        foreign = [row for row in step.rows if row.owner != step.tenant]
        if not foreign:
            continue
        owners = sorted({row.owner for row in foreign})
        sample = ", ".join(f"{row.table} #{row.id} of {row.owner!r}" for row in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        decoy = " (decoy rows from public: the search_path fell back to public)" if owners == ["public"] else ""
        findings.append(Finding(
            "cross_tenant_read",
            f"{_who(step)} read {len(foreign)} row(s) it does not own: {sample}{more}{decoy}.",
            (step.seq,), step.tenant, _gating(history, step)))
    return findings


def check_team_writes(history: History) -> list[Finding]:
    """A row of the team's tables written into a copy its step's tenant does not own (the read
    observer names the copy each written row went to)."""
    findings = []
    for step in history.steps:
        foreign = [row for row in step.wrote if row.owner != step.tenant]
        if not foreign:
            continue
        sample = ", ".join(f"{row.table} ({row.id}) in {row.owner!r}'s copy" for row in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        findings.append(Finding(
            "misplaced_write", f"{_who(step)} wrote {len(foreign)} row(s) outside its tenant: {sample}{more}.",
            (step.seq,), step.tenant, _gating(history, step)))
    return findings


def check_context_lost(history: History) -> list[Finding]:
    """The tenant context was gone: a missing relation, a write refused by row-level security
    although it was made for the right tenant, or a full read that saw no row at all (every
    tenant has seeded rows, so an empty answer means the session was bound to nobody)."""
    findings = []
    for step in history.steps:
        if step.error and step.error.sqlstate == UNDEFINED_TABLE:
            why = f"failed with \"{step.error.message}\""
        elif step.error and step.error.sqlstate == INSUFFICIENT_PRIVILEGE and "row-level security" in step.error.message:
            why = (f"was refused by row-level security (\"{step.error.message}\") although it wrote a row of "
                   f"its own tenant")
        elif step.error is None and step_kind(step.step).reads_all and not step.rows and not step.note:
            why = "read no row at all, although every tenant has seeded rows"
        else:
            continue
        findings.append(Finding("context_lost", f"{_who(step)} {why}: the tenant context was gone.",
                                (step.seq,), step.tenant, _gating(history, step)))
    return findings


def _path_elements(search_path: str) -> list[str]:
    return [part.strip() for part in search_path.split(",")]


def check_unsafe_identifiers(history: History) -> list[Finding]:
    """A tenant name that needs quoting broke the SQL, or went into search_path unquoted.

    A correctly quoted name shows in ``current_setting('search_path')`` with its
    quotes (``"Acme"``); the bare name there means PostgreSQL parses it as an
    unquoted identifier: folded to lower case (``Acme`` becomes ``acme``, another
    tenant) or rejected.
    """
    findings = []
    for step in history.steps:
        if not needs_quoting(step.tenant):
            continue
        if step.error and step.error.sqlstate in IDENTIFIER_SQLSTATES:
            findings.append(Finding(
                "unsafe_identifier",
                f"{_who(step)} hit {IDENTIFIER_SQLSTATES[step.error.sqlstate]} (\"{step.error.message}\"): "
                f"the name {step.tenant!r} was not quoted where it was used.",
                (step.seq,), step.tenant, _gating(history, step)))
        elif step.search_path and step.tenant in _path_elements(step.search_path):
            findings.append(Finding(
                "unsafe_identifier",
                f"{_who(step)} ran with search_path {step.search_path!r}: the name {step.tenant!r} went in "
                f"unquoted, so PostgreSQL reads it as {step.tenant.lower()!r}"
                f"{' (another tenant)' if step.tenant.lower() in history.tenants else ''}.",
                (step.seq,), step.tenant, _gating(history, step)))
    return findings


# psycopg 3 prepares a statement after 5 executions (prepare_threshold=5), asyncpg every statement (named
# while its statement cache is on); PgBouncer before 1.21 cannot route prepared statements in transaction
# mode, so the next transaction's server does not have it. Not an isolation failure.
PREPARED_STATEMENT_ADVICE = ("a prepared-statement error, not an isolation failure: the driver prepares statements "
                             "(psycopg at the 5th execution, asyncpg with its statement cache) and PgBouncer before "
                             "1.21 cannot route prepared statements in transaction mode; turn the driver's prepares "
                             "off (psycopg: connect_args={'prepare_threshold': None}; asyncpg: "
                             "connect_args={'statement_cache_size': 0, 'prepared_statement_cache_size': 0}) or set "
                             "PgBouncer's max_prepared_statements (1.21+)")


def _error_explanation(step: StepRecord) -> str:
    assert step.error is not None
    text = f"{_who(step)} failed: {step.error.type}: {step.error.message}"
    if is_prepared_statement_error(step.error):
        text += f" ({PREPARED_STATEMENT_ADVICE})"
    return text


def check_errors(history: History) -> list[Finding]:
    """Any other failure: kept apart from isolation findings. A step the step deadline stopped failed with
    the harness's cancel: the lock_wait check words it."""
    return [Finding("error", _error_explanation(step), (step.seq,), step.tenant, _gating(history, step))
            for step in history.steps
            if step.error and step.waited is None and step.error.sqlstate != UNDEFINED_TABLE
            and not expected_under_faults(history, step)  # a fault's doing: the request may fail
            and not is_name_refusal(step)  # the refused check words it: sound, not an error
            and not (step.error.sqlstate == INSUFFICIENT_PRIVILEGE and "row-level security" in step.error.message)
            and not (needs_quoting(step.tenant) and step.error.sqlstate in IDENTIFIER_SQLSTATES)]
