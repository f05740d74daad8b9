"""What the runner gathers while a step runs, besides what the step returns.

- **The app's own warnings and log records**: Python ``warnings`` and ``logging``
  from the team's code and the libraries it calls (SQLAlchemy's warnings, the
  app's ``logger.info``, a pool's "Exception during reset"). They are the cell's
  evidence (:class:`AppMessages`: the first distinct ones with their counts), not
  lines on the terminal, where the run's progress is.
- **Session state a statement set** (``SET``, ``RESET``, ``DISCARD``,
  ``set_config(..., false)``), with the backend it ran on and the search_path
  right after it, read in the same transaction: a later step that inherits that
  state on the backend is traced to the step that left it
  (:mod:`harness.checks.leftovers`).

One context variable holds the :class:`StepWatch` of the step running in this
thread (or event-loop task: a task copies the context it was created in). The
hooks, installed once per process by :func:`install`, hand everything on
unchanged when it is unset; the runner sets it once a step, so the hammer's hot
path pays one ``ContextVar.set`` and ``reset`` a step, and a statement one call
and a substring test.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from harness.checks.history import AppMessage, StateSet

#: distinct messages a cell keeps (each with its count); the rest are only counted
KEPT_MESSAGES = 50
TEXT_LIMIT = 300
STATEMENT_LIMIT = 120
#: a statement that changes session state past its transaction. SET LOCAL, SET TRANSACTION and
#: SET CONSTRAINTS end with the transaction; set_config(..., true) too.
SETS_STATE = re.compile(r"^\s*(?:(?:SET|RESET)\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b)|DISCARD\s)"
                        r"|\bset_config\s*\([^()]*,\s*false\s*\)", re.IGNORECASE)
STATE_QUERY = "SELECT pg_backend_pid(), current_setting('search_path')"


class AppMessages:
    """The app's warnings and log records of one cell: the first :data:`KEPT_MESSAGES` distinct ones (by
    kind, source and text) with their counts, and how many others were emitted. Shared by a cell's threads."""

    def __init__(self, limit: int = KEPT_MESSAGES) -> None:
        self.limit = limit
        self._kept: dict[tuple[str, str, str], list[Any]] = {}  # key -> [count, level, where, first step]
        self.not_kept = 0
        self._lock = threading.Lock()

    def add(self, kind: str, source: str, level: str, text: str, where: str, step: int) -> None:
        key = (kind, source, text)
        with self._lock:
            entry = self._kept.get(key)
            if entry is not None:
                entry[0] += 1
            elif len(self._kept) < self.limit:
                self._kept[key] = [1, level, where, step]
            else:
                self.not_kept += 1

    def kept(self) -> tuple[AppMessage, ...]:
        with self._lock:
            return tuple(AppMessage(kind, source, level, text, where, count, step)
                         for (kind, source, text), (count, level, where, step) in self._kept.items())


class StepWatch:
    """What one step's hooks gather: its messages go straight to the cell's :class:`AppMessages`, the state
    its statements set is kept here for its record."""

    __slots__ = ("messages", "seq", "state_set")

    def __init__(self, messages: AppMessages, seq: int) -> None:
        self.messages = messages
        self.seq = seq
        self.state_set: list[StateSet] = []


CURRENT: contextvars.ContextVar[StepWatch | None] = contextvars.ContextVar("harness_step_watch", default=None)


def _first_line(text: str, limit: int = TEXT_LIMIT) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


# -- logging ----------------------------------------------------------------------------------
# Logging has no hook between a record and the handlers that print it: a filter on a logger does not see
# records propagated from its children, and handlers come and go. ``Logger.callHandlers`` is the one place
# every record passes on its way to a handler (the "last resort" handler that prints a warning of an
# unconfigured app included), so it is wrapped, once: inside a step the record goes to the cell's evidence.
_call_handlers = logging.Logger.callHandlers


def _call_handlers_outside_steps(self: logging.Logger, record: logging.LogRecord) -> None:
    watch = CURRENT.get()
    if watch is None:
        _call_handlers(self, record)
        return
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a record whose arguments do not fit its format: keep the format
        text = str(record.msg)
    if record.exc_info and record.exc_info[1] is not None:
        text = f"{_first_line(text)} ({type(record.exc_info[1]).__name__}: {_first_line(str(record.exc_info[1]))})"
    watch.messages.add("log", record.name, record.levelname, _first_line(text), f"{record.filename}:{record.lineno}",
                       watch.seq)


# -- warnings ---------------------------------------------------------------------------------
# ``warnings.showwarning`` is the documented hook for what happens to a warning that passed the filters.
# ``catch_warnings`` (pytest's, for one) saves and restores it, so :func:`install` checks it again each time.
_shown_before: Any = None


def _show_outside_steps(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        file: Any = None, line: str | None = None) -> None:
    watch = CURRENT.get()
    if watch is None:
        _shown_before(message, category, filename, lineno, file, line)
        return
    watch.messages.add("warning", category.__name__, "WARNING", _first_line(str(message)),
                       f"{Path(filename).name}:{lineno}", watch.seq)


# -- session state ----------------------------------------------------------------------------
def _after_execute(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                   executemany: bool) -> None:
    watch = CURRENT.get()
    if watch is None or not ("set" in statement or "SET" in statement or "Set" in statement or
                             "DISCARD" in statement or "discard" in statement):
        return
    if not SETS_STATE.search(statement):
        return
    try:
        # A cursor of its own on the same DBAPI connection, in the transaction the statement ran in (the same
        # server behind any pooler): the statement's cursor keeps its result.
        probe = conn.connection.cursor()
        try:
            if type(probe).__module__.split(".")[0] == "psycopg":
                # never prepared: behind a PgBouncer without prepared-statement support the next execution
                # could meet another server, and the failure would abort the app's transaction
                probe.execute(STATE_QUERY, prepare=False)
            else:
                probe.execute(STATE_QUERY)
            pid, path = probe.fetchone()
        finally:
            probe.close()
    except Exception:  # noqa: BLE001 - not read: the state is still recorded, without its backend
        pid, path = None, ""
    watch.state_set.append(StateSet(pid, str(path), _first_line(" ".join(statement.split()), STATEMENT_LIMIT)))


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Install the hooks (once per process); put the warnings hook back if a ``catch_warnings`` replaced it."""
    global _installed, _shown_before
    with _install_lock:
        if not _installed:
            logging.Logger.callHandlers = _call_handlers_outside_steps  # type: ignore[method-assign]
            event.listen(Engine, "after_cursor_execute", _after_execute)
            _installed = True
        if warnings.showwarning is not _show_outside_steps:
            _shown_before = warnings.showwarning
            warnings.showwarning = _show_outside_steps


def watching(messages: AppMessages, seq: int) -> tuple[StepWatch, contextvars.Token]:
    """Start watching a step: its :class:`StepWatch` and the token that ends it (``CURRENT.reset``)."""
    watch = StepWatch(messages, seq)
    return watch, CURRENT.set(watch)
