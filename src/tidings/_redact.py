"""Keeping credentials out of logs, error messages and pages: one function for every URL
tidings shows (broker URLs, database URLs, exporter endpoints)."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

#: Query options whose value is a secret (``password=``, ``sasl_password=``,
#: ``oauth_client_secret=``, ``token=``, ``api_key=``...).
_SECRET_OPTION = re.compile(r"passw|secret|token|credential|api_?key", re.I)


def redact_url(url: str) -> str:
    """``url`` with its password, and the values of secret-named query options, replaced
    by ``***``; the rest (scheme, user, host, path, other options) is kept.

    ``kafka://alice:S3cret@broker:9092?sasl_password=x`` becomes
    ``kafka://alice:***@broker:9092?sasl_password=***``. It works on strings that are not
    valid URLs too (a mistyped scheme, a bad port), so an error about a bad URL can show it.
    """
    base, question, query = url.partition("?")
    query, hash_, fragment = query.partition("#")
    if not question:
        base, hash_, fragment = base.partition("#")
    scheme, sep, rest = base.partition("://") if "://" in base else ("", "", base)
    if sep and not rest.startswith("/") and "@" in rest:
        # The user info runs to the last "@": a raw "/" or "@" in a password stays hidden.
        userinfo, _, host = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else rest
    redacted = f"{scheme}{sep}{rest}"
    if question:
        redacted += "?" + "&".join(_option(item) for item in query.split("&"))
    return redacted + (hash_ + fragment if hash_ else "")


def _option(item: str) -> str:
    name, equals, value = item.partition("=")
    return f"{name}=***" if equals and value and _SECRET_OPTION.search(name) else item
