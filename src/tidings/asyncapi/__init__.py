"""AsyncAPI 3.0 documents from the code: what each app receives and sends, with the
payloads' JSON Schema; and which changes between two documents break consumers.

``tidings asyncapi MODULE:APP`` prints :func:`document`; ``--check PREVIOUS.json`` lists
:func:`breaking_changes`. Each app that handles or declares messages appends its
document to the ``tidings.apps`` topic when it starts (:data:`APPS_TOPIC`), which is how
the console knows services it never imported (:func:`read_documents`).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .._errors import UnknownTopicError
from .._message import Headers
from .._outgoing import make_record
from .._records import OutRecord
from ..ports import Transport
from ._check import breaking_changes
from ._document import ASYNCAPI_VERSION, document, merge

if TYPE_CHECKING:
    from .._app import App

__all__ = [
    "APPS_TOPIC",
    "ASYNCAPI_VERSION",
    "breaking_changes",
    "describe_record",
    "document",
    "merge",
    "read_documents",
]

#: Where apps describe themselves at start (one partition, keyed by app name).
APPS_TOPIC = "tidings.apps"
_PAGE = 500


def describe_record(app: App, n: int = 1) -> OutRecord:
    """The record an app appends to :data:`APPS_TOPIC` when it starts (``n`` = 1), and
    again (``n`` = 2, 3, ...) when a publish call shows it a new typed message."""
    body = {"app": app.name, "instance": app.instance_id, "started_at": time.time(),
            "asyncapi": document(app)}
    return make_record(APPS_TOPIC, body, app.name, None, None, None,
                       {Headers.ID: f"{app.instance_id}-describe-{n}"})


async def read_documents(transport: Transport) -> dict[str, dict[str, Any]]:
    """The newest document each app appended to :data:`APPS_TOPIC`, by app name."""
    latest: dict[str, dict[str, Any]] = {}
    infos = {t.name: t for t in await transport.describe_topics()}
    if APPS_TOPIC not in infos:
        return latest
    info = infos[APPS_TOPIC]
    for partition in range(info.partitions):
        offset = info.start_offsets.get(partition, 0)
        while True:
            try:
                page = await transport.read(APPS_TOPIC, partition, offset, _PAGE)
            except UnknownTopicError:
                return latest
            for record in page:
                try:
                    body = json.loads(record.value)
                    latest[str(body["app"])] = body["asyncapi"]
                except (ValueError, KeyError, TypeError):
                    continue  # not an app description: skip it
            if len(page) < _PAGE:
                break
            offset = page[-1].offset + 1
    return latest
