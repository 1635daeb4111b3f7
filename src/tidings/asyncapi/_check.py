"""Which differences between two AsyncAPI documents break existing consumers.

Breaking: a topic (channel) removed, a message removed from a topic, and in a message
payload (followed through ``$ref`` into nested models) a required field added or
removed, or a field's type changed. Adding a topic, a message or an optional field is
compatible.
"""

from __future__ import annotations

from typing import Any

__all__ = ["breaking_changes"]

_MAX_DEPTH = 20


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per change from ``old`` to ``new`` that breaks a consumer of ``old``."""
    changes: list[str] = []
    old_channels, new_channels = old.get("channels", {}), new.get("channels", {})
    for key, channel in sorted(old_channels.items()):
        topic = channel.get("address") or key
        if key not in new_channels:
            changes.append(f"topic {topic}: removed")
            continue
        new_messages = new_channels[key].get("messages", {})
        for name in sorted(channel.get("messages", {})):
            if name not in new_messages:
                changes.append(f"topic {topic}: message {name} removed")
                continue
            before = _resolve(old, _payload(old, name))
            after = _resolve(new, _payload(new, name))
            _compare(old, new, before, after, f"topic {topic}: {name}", changes, 0)
    return changes


def _payload(doc: dict[str, Any], name: str) -> Any:
    message = doc.get("components", {}).get("messages", {}).get(name, {})
    return message.get("payload", {})


def _resolve(doc: dict[str, Any], schema: Any) -> Any:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < _MAX_DEPTH:
        ref = str(schema["$ref"])
        schema = doc.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
        seen += 1
    return schema


def _kind(schema: Any) -> Any:
    """What a field's type is, comparably: its ``type``, its ``$ref`` target, its enum
    or const, or the kinds of its alternatives."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return ("ref", str(schema["$ref"]).rsplit("/", 1)[-1])
    for choice in ("anyOf", "oneOf"):
        if choice in schema:
            return (choice, tuple(sorted(map(repr, map(_kind, schema[choice])))))
    if "const" in schema:
        return ("const", repr(schema["const"]))
    kind = schema.get("type")
    return tuple(kind) if isinstance(kind, list) else kind


def _compare(old: dict[str, Any], new: dict[str, Any], before: Any, after: Any,
             where: str, changes: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH or not isinstance(before, dict) or not isinstance(after, dict):
        return
    old_props, new_props = before.get("properties", {}), after.get("properties", {})
    old_required, new_required = set(before.get("required", ())), set(after.get("required", ()))
    for field in sorted(new_required - old_required):
        changes.append(f"{where}: required field {field!r} added")
    for field in sorted(old_required - set(new_props)):
        changes.append(f"{where}: required field {field!r} removed")
    for field in sorted(set(old_props) & set(new_props)):
        a, b = old_props[field], new_props[field]
        if _kind(a) != _kind(b):
            changes.append(f"{where}: field {field!r} changed type "
                           f"from {_show(_kind(a))} to {_show(_kind(b))}")
        elif isinstance(a, dict) and "$ref" in a:
            _compare(old, new, _resolve(old, a), _resolve(new, b), f"{where}.{field}",
                     changes, depth + 1)
    if _kind(before) != _kind(after) and not old_props:
        changes.append(f"{where}: payload changed type from {_show(_kind(before))} "
                       f"to {_show(_kind(after))}")


def _show(kind: Any) -> str:
    if isinstance(kind, tuple) and kind and kind[0] == "ref":
        return str(kind[1])
    return str(kind)
