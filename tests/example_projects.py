"""What the example-app tests share (importable as ``example_projects``): a copy of an example, and
`harness ...` run from its root as its team runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def copy_example(name: str, into: Path) -> Path:
    """A copy of ``examples/<name>`` in ``into`` (without caches and reports)."""
    project = into / name
    shutil.copytree(EXAMPLES / name, project, ignore=shutil.ignore_patterns("__pycache__", "reports", ".hypothesis"))
    return project


def run_harness(project: Path, *args: str, timeout: float, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`harness ...` from the project's root, without PYTHONPATH, HARNESS_* or the variables in ``drop``: the
    project's modules import as pytest's would, and its settings come from its own pyproject.toml."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", *drop) and not k.startswith("HARNESS_")}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)
