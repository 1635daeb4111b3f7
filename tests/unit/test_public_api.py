"""The public API is pinned: adding or removing a name is a deliberate act."""

from __future__ import annotations

import types

import tidings
from tidings import App, Message, testing


def test_exported_members() -> None:
    assert sorted(tidings.__all__) == sorted([
        "DEFAULT_BROKER", "App", "AppendCall", "AppendNext", "BrokerUnavailableError",
        "CallNext", "CatchUp", "ConfigurationError", "HandlerCall", "Health", "Middleware",
        "PartitionLag", "Position",
        "CronError", "DeadLetter",
        "DeadLetters", "DecodeError", "FencedError", "GroupInfo", "Headers", "MemberInfo",
        "Message", "MessageTooLargeError", "MissingDependencyError", "NotRunningError",
        "Outgoing", "Published", "PublishedMany", "Record", "RemoteError",
        "RequestTimeoutError", "RetryPolicy",
        "SerializationError", "Start", "TidingsError", "TopicInfo", "TopicPartition",
        "TransportError", "UnknownTopicError", "__version__", "cron", "redact_url",
    ])
    for name in tidings.__all__:
        assert getattr(tidings, name) is not None
        obj = getattr(tidings, name)
        if callable(obj) and not isinstance(obj, types.GenericAlias):  # not a type alias
            assert obj.__doc__, f"{name} has no docstring"


def test_every_error_is_a_tidings_error() -> None:
    errors = [getattr(tidings, n) for n in tidings.__all__ if n.endswith("Error")]
    assert errors
    assert all(issubclass(e, tidings.TidingsError) for e in errors)


def test_decorators_return_the_function_unchanged() -> None:
    app = App("typed", broker=testing.memory_url())

    async def handler(payload: dict[str, int], message: Message) -> None: ...

    async def answer(payload: dict[str, int]) -> int:
        return 1

    registered = app.subscriber("t")(handler)
    responder = app.responder("r")(answer)
    worker = app.worker("q")(answer)
    assert registered is handler and responder is answer and worker is answer
    # tests/typing/check_decorators.py has mypy check that the static types are kept too.


def test_testing_members() -> None:
    assert sorted(testing.__all__) == ["FakeClock", "TestBus", "crash", "memory_url"]
    for name in testing.__all__:
        assert getattr(testing, name).__doc__, f"testing.{name} has no docstring"
