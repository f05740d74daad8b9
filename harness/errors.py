"""Errors the harness raises on purpose.

Every error says what was checked and what to do about it, so that the CLI can
print it as-is and exit with status 2 (usage or setup error).
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: a problem the user can fix, with a remedy in the message."""

    def __init__(self, problem: str, *, checked: list[str] | None = None, fix: list[str] | None = None):
        self.problem = problem
        self.checked = list(checked or [])
        self.fix = list(fix or [])
        super().__init__(self.render())

    def __reduce__(self):
        # Keyword-only arguments: rebuilt explicitly, so an error crosses a process boundary (--jobs) intact.
        return (_rebuild, (type(self), self.problem, self.checked, self.fix))

    def render(self) -> str:
        lines = [self.problem]
        if self.checked:
            lines.append("Checked:")
            lines.extend(f"  - {item}" for item in self.checked)
        if self.fix:
            lines.append("To fix this, either:" if len(self.fix) > 1 else "To fix this:")
            lines.extend(f"  - {item}" for item in self.fix)
        return "\n".join(lines)


class SetupError(HarnessError):
    """The machine lacks something the stack needs (a binary, a free port, an account)."""


class StartupTimeout(HarnessError):
    """A process did not become ready before its deadline."""


class UsageError(HarnessError):
    """The user asked for something that does not exist or cannot work."""


def _rebuild(cls: type[HarnessError], problem: str, checked: list[str], fix: list[str]) -> HarnessError:
    return cls(problem, checked=checked, fix=fix)
