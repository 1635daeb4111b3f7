"""Checked by mypy (``make lint``), not run: decorators keep the user's types."""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from tidings import App, Message


class Event(BaseModel):
    n: int


app = App("typed", broker="memory://typing")


@app.subscriber("events")
async def on_event(event: Event, message: Message) -> None: ...


@app.responder("answers")
async def answer(question: dict[str, int]) -> int:
    return 42


async def calls_keep_their_types(message: Message) -> None:
    # Were a decorator to return Any or a wrapper of another type, these would fail.
    assert_type(await on_event(Event(n=1), message), None)
    assert_type(await answer({"q": 1}), int)


async def client() -> None:
    reply = await app.request("answers", {"q": 1}, response_type=Event)
    assert_type(reply, Event)
