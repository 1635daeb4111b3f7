"""Files only their owner can read: the bus and the services' databases hold payloads
(card numbers, addresses), so tidings creates them 0600 in folders it creates 0700.

SQLite gives a database's ``-wal`` and ``-shm`` files the permissions of the database
file, so creating that file 0600 before SQLite opens it covers its journals too. Files
and folders that already exist are left as they are: their owner chose.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["private_file", "private_folder"]


def private_folder(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 (before the umask)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise


def private_file(path: Path) -> None:
    """Create the empty file ``path`` 0600 (in a 0700 folder) if it does not exist."""
    private_folder(path.parent)
    with contextlib.suppress(FileExistsError):  # an existing file keeps the mode it has
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
