"""The console: a live web view of a bus (topics, groups and lag, dead letters, sagas,
every conversation's timeline, the apps' AsyncAPI documents), with a JSON API.

``tidings console [--broker URL] [--db URL ...] [--port 8088] [--allow-actions]`` serves
it on 127.0.0.1 (needs the ``console`` extra: FastAPI and uvicorn). Without
``--allow-actions`` it only reads: re-drive, purge and saga retry answer 403.
"""

from __future__ import annotations

from ._conversation import SCAN_LIMIT
from ._serve import open_view, serve
from ._view import ActionRefused, BusView

__all__ = ["SCAN_LIMIT", "ActionRefused", "BusView", "open_view", "serve"]
