"""Workload: programs (who does what, in which order), the runner, the history it records."""
