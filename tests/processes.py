"""A service process for a test: started with its output in one text pipe, and killed
and reaped at the end whatever the test did (a clean stop is the test's to check)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["service_process"]


@contextmanager
def service_process(command: list[str], cwd: Path, env: dict[str, str] | None = None
                    ) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """Start ``command``; yield the process and its merged stdout and stderr."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        yield proc, proc.stdout
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
