"""The article's first example: a user registers, others hear about it.

``users`` publishes ``USER_REGISTERED`` on topic ``users`` (key: a fresh UUID);
``notifications`` listens in its own consumer group. Run the listener as a service with
``tidings run examples.registration:notifications``.
"""

from __future__ import annotations

import logging
import uuid

from pydantic import BaseModel

from tidings import App

log = logging.getLogger("notifications")


class UserRegistered(BaseModel):
    """The event, in the article's format."""

    type: str
    userId: int
    username: str


notifications = App("notifications")


@notifications.subscriber("users")
async def on_user_registered(event: UserRegistered) -> None:
    """Log each registration once per user."""
    log.info("Received registration event for user %s (%s)", event.userId, event.username)


async def register(users: App, user_id: int, username: str) -> None:
    """What the users service does after inserting the user."""
    event = UserRegistered(type="USER_REGISTERED", userId=user_id, username=username)
    await users.publish("users", event, key=str(uuid.uuid4()))
