"""An app's AsyncAPI 3.0 document, built from what it registered.

Channels are its topics; a ``receive`` operation per subscriber, worker and responder
(with ``x-tidings-group`` and ``x-tidings-role``), a ``send`` operation per topic it
declared with :meth:`App.publishes`; message payloads are JSON Schema from the
handlers' and declarations' pydantic annotations (``components.schemas``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pydantic

from .._subscriber import Role

if TYPE_CHECKING:
    from .._app import App

__all__ = ["ASYNCAPI_VERSION", "document", "merge"]

ASYNCAPI_VERSION = "3.0.0"
_REF = "#/components/schemas/{model}"
_UNSAFE = re.compile(r"[^\w.\-]")


def document(app: App, *, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``app``."""
    doc: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": app.name, "version": version,
                 "description": f"tidings app {app.name}"},
        "defaultContentType": "application/json",
        "channels": {}, "operations": {},
        "components": {"messages": {}, "schemas": {}},
    }
    for spec in app._subscribers:  # this package's own view of the app's registrations
        if spec.role is Role.CRON:
            continue
        for topic in spec.topics:
            names = _add_messages(doc, topic, spec.handler.payload_type)
            op = _key(f"{spec.group}.{spec.role.value}.{topic}")
            doc["operations"][op] = _operation("receive", topic, names) | {
                "x-tidings-group": spec.group, "x-tidings-role": spec.role.value}
    for topic, payload_type in app._publishes:
        names = _add_messages(doc, topic, payload_type)
        op = _key(f"{app.name}.send.{topic}.{'_'.join(names)}")
        doc["operations"][op] = _operation("send", topic, names)
    return doc


def _key(text: str) -> str:
    return _UNSAFE.sub("_", text)


def _operation(action: str, topic: str, messages: list[str]) -> dict[str, Any]:
    channel = _key(topic)
    return {"action": action, "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages]}


def _add_messages(doc: dict[str, Any], topic: str, payload_type: Any) -> list[str]:
    """Add the channel of ``topic`` and its messages for ``payload_type`` (one per model
    of a union of models, else one); return the messages' names."""
    channel = doc["channels"].setdefault(_key(topic), {"address": topic, "messages": {}})
    names = []
    for each in _members(payload_type):
        name, schema = _schema(each, doc["components"]["schemas"])
        channel["messages"][name] = {"$ref": f"#/components/messages/{name}"}
        doc["components"]["messages"].setdefault(
            name, {"name": name, "contentType": "application/json", "payload": schema})
        names.append(name)
    return names


def _members(payload_type: Any) -> list[Any]:
    """The models of a union of models (also inside ``Annotated``), else the type."""
    inner = payload_type
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) in (typing.Union, types.UnionType):
        members = list(typing.get_args(inner))
        if all(isinstance(m, type) and issubclass(m, pydantic.BaseModel) for m in members):
            return members
    return [payload_type]


def _schema(payload_type: Any, schemas: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(message name, payload schema) for ``payload_type``; named models go to
    ``schemas`` and are referenced."""
    if payload_type in (bytes, None) or payload_type is Any:
        return "Bytes", {}
    try:
        adapter = pydantic.TypeAdapter(payload_type)
        raw = adapter.json_schema(ref_template=_REF)
    except Exception:  # a type pydantic cannot describe: say nothing rather than fail
        return _key(getattr(payload_type, "__name__", "Payload")), {}
    raw = _draft7(raw)
    for model, sub in raw.pop("$defs", {}).items():
        schemas[model] = sub
    is_model = isinstance(payload_type, type) and issubclass(payload_type, pydantic.BaseModel)
    if is_model:
        name = _key(payload_type.__name__)
        schemas[name] = raw
        return name, {"$ref": _REF.format(model=name)}
    name = _key(str(raw.get("title") or getattr(payload_type, "__name__", "")) or "Payload")
    return name, raw


def _draft7(schema: Any) -> Any:
    """Pydantic's JSON Schema (2020-12) as AsyncAPI's schema object reads it: an
    OpenAPI-style ``discriminator`` object becomes its property name, ``prefixItems``
    becomes ``items`` as a list."""
    if isinstance(schema, list):
        return [_draft7(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _draft7(v) for k, v in schema.items()}
    if isinstance(out.get("discriminator"), dict):
        out["discriminator"] = out["discriminator"].get("propertyName", "")
    if "prefixItems" in out:
        out["items"] = out.pop("prefixItems")
    return out


def merge(documents: Iterable[dict[str, Any]], *, title: str = "tidings system") -> dict[str, Any]:
    """One document for several apps: their channels, operations and components
    together (the console's ``/api/asyncapi``); later documents win on a clash."""
    merged: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": "1.0.0", "description": ""},
        "defaultContentType": "application/json",
        "channels": {}, "operations": {}, "components": {"messages": {}, "schemas": {}},
    }
    titles = []
    for doc in documents:
        titles.append(doc.get("info", {}).get("title", "?"))
        for topic, channel in doc.get("channels", {}).items():
            into = merged["channels"].setdefault(topic, {"address": channel.get("address"),
                                                         "messages": {}})
            into["messages"].update(channel.get("messages", {}))
        merged["operations"].update(doc.get("operations", {}))
        for part in ("messages", "schemas"):
            merged["components"][part].update(doc.get("components", {}).get(part, {}))
    merged["info"]["description"] = "apps: " + ", ".join(sorted(titles))
    return merged
