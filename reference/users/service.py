"""users: ``POST /register``, ``GET /users/{id}``; each new user is announced on ``users``.

The user row and the outbox row of its ``USER_REGISTERED`` event commit together: a user
exists if and only if the event will be published. Registering answers the new user's
token (:mod:`reference.common.auth`); a user reads only their own record with it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from ..common.auth import Caller, user_token
from ..common.events import Topics, UserRegistered
from ..common.messaging import Tx
from ..common.service import Service
from ..common.settings import Settings
from ..common.web import ApiError, error_responses

__all__ = ["NewUser", "Registered", "User", "build"]

log = logging.getLogger("reference.users")

#: No control characters: a name or an address is shown on pages and written in logs,
#: where a newline would start a line that seems to come from someone else.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                        pattern=r"^[^\x00-\x1f\x7f]*$")]
#: User ids are SQLite integers: anything larger is no user (422, not an overflow).
UserId = Annotated[int, PathParam(ge=1, le=2**62)]


class NewUser(BaseModel):
    """``POST /register`` body (the article's form)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    username: Text
    age: int = Field(ge=0, le=150)
    address: Text


class User(BaseModel):
    """A registered user."""

    id: int
    username: str
    age: int
    address: str


class Registered(User):
    """``POST /register`` answer: the new user and their bearer token."""

    token: str


def _schema() -> tuple[MetaData, Table]:
    metadata = MetaData()
    users = Table(
        "users", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("username", String, nullable=False),
        Column("age", Integer, nullable=False),
        Column("address", String, nullable=False),
    )
    return metadata, users


def build(settings: Settings) -> Service:
    """The users service."""
    metadata, users = _schema()
    service = Service("users", settings, metadata)
    api, uow, db = service.api, service.uow, service.db

    @api.post("/register", status_code=201, response_model=Registered,
              responses=error_responses(413, 422), tags=["users"])
    async def register(new: NewUser) -> Registered:
        """Create a user; its id is assigned in the transaction that stages the event."""
        async def record(tx: Tx) -> int:
            result = await tx.conn.execute(users.insert().values(**new.model_dump()))
            user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            event = UserRegistered(userId=user_id, username=new.username)
            await tx.emit(Topics.USERS, event, key=str(uuid.uuid4()))
            return user_id

        user_id = await uow.run(record)
        log.info("New user created with ID %s", user_id)
        return Registered(id=user_id, token=user_token(settings, user_id), **new.model_dump())

    @api.get("/users/{user_id}", response_model=User,
             responses=error_responses(401, 403, 404, 422), tags=["users"])
    async def get_user(user_id: UserId, caller: Caller) -> User:
        """One user by id: the caller's own record only."""
        if user_id != caller:
            raise ApiError(403, "a user's record is theirs only")
        async with db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        if row is None:
            raise ApiError(404, f"no user with id {user_id}")
        return User.model_validate(row._asdict())

    return service
