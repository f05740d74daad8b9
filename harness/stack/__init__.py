"""Processes: the stack (PostgreSQL + two PgBouncers) and how it starts and stops."""

from harness.stack.stack import POOLED_ROUTES, ROUTES, Stack, start_native_stack

__all__ = ["POOLED_ROUTES", "ROUTES", "Stack", "start_native_stack", "start_stack"]


def start_stack(config) -> Stack:
    """Start a stack with the configured backend."""
    from harness.errors import UsageError

    if config.backend == "native":
        return start_native_stack(config)
    raise UsageError(f"Unknown backend {config.backend!r}.", fix=["use --backend native"])
