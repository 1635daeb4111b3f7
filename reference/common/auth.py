"""Who is calling: signed bearer tokens that every service checks on its own.

``POST /register`` answers a new user's token. A token is the user id and an HMAC of it
under the shop's secret (:attr:`Settings.secret`, which the supervisor gives every
service), so any service checks one without a shared database and without asking the
users service. Admin endpoints (restocking, the fraud rules, counts) want the admin
token (:attr:`Settings.admin_token`) instead.

Routes declare what they need with a :data:`Caller` parameter (the caller's user id;
401 without a valid token) or ``dependencies=[ADMIN]`` (401 without the admin token); a
route serving one user's data compares that id with the data's owner (403 or 404). The
app's :class:`Auth` is ``api.state.auth`` (:meth:`Auth.install`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .settings import Settings
from .web import ApiError

__all__ = ["ADMIN", "Auth", "Caller", "sign", "user_token"]

#: What a 401 tells the client to present (RFC 6750).
CHALLENGE = {"www-authenticate": 'Bearer realm="tidings shop"'}
_USER_TOKEN = re.compile(r"^u(\d{1,19})\.([A-Za-z0-9_-]{43})$")
Bearer = Annotated[HTTPAuthorizationCredentials | None,
                   Depends(HTTPBearer(auto_error=False, description="a user's token "
                                      "(from POST /register) or the admin token"))]


def sign(settings: Settings, purpose: str, value: str) -> str:
    """The HMAC-SHA256 of ``purpose:value`` under the shop's secret, base64url without
    padding (43 characters). ``purpose`` keeps a user token from passing for a card
    token and back."""
    key = settings.secret.get_secret_value().encode()
    digest = hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def user_token(settings: Settings, user_id: int) -> str:
    """The bearer token of ``user_id``."""
    return f"u{user_id}.{sign(settings, 'user', str(user_id))}"


class Auth:
    """FastAPI dependencies checking the caller's bearer token."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def install(self, api: FastAPI) -> None:
        """Make this the ``api``'s authority for :data:`Caller` and :data:`ADMIN`."""
        api.state.auth = self

    def user_of(self, token: str) -> int | None:
        """The user ``token`` was issued to, or None if it is not a valid user token."""
        match = _USER_TOKEN.match(token)
        if match is None:
            return None
        expected = sign(self.settings, "user", match.group(1))
        return int(match.group(1)) if hmac.compare_digest(match.group(2), expected) else None

    def is_admin(self, token: str) -> bool:
        """Whether ``token`` is the admin token."""
        return hmac.compare_digest(token.encode(),
                                   self.settings.admin_token.get_secret_value().encode())



async def _caller(request: Request, credentials: Bearer) -> int:
    """The calling user's id; 401 unless a valid user token is presented."""
    auth: Auth = request.app.state.auth
    user_id = None if credentials is None else auth.user_of(credentials.credentials)
    if user_id is None:
        raise ApiError(401, "a valid user token is required (Authorization: Bearer "
                            "<token from POST /register>)", CHALLENGE)
    return user_id


async def _admin(request: Request, credentials: Bearer) -> None:
    """Nothing; 401 unless the admin token is presented."""
    auth: Auth = request.app.state.auth
    if credentials is None or not auth.is_admin(credentials.credentials):
        raise ApiError(401, "the admin token is required (Authorization: Bearer "
                            "<SHOP_ADMIN_TOKEN>)", CHALLENGE)


#: A route parameter: the calling user's id (401 without a valid user token).
Caller = Annotated[int, Depends(_caller)]
#: A route dependency: the admin token is required (401 without it).
ADMIN = Depends(_admin)
