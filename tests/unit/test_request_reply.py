"""Request/reply on the memory bus: many concurrent first requests each get their own
answer, and a request nobody answers raises RequestTimeoutError on time and is
forgotten."""

from __future__ import annotations

import asyncio
import time

import pytest

from tidings import App, RequestTimeoutError


def test_concurrent_first_requests_all_get_their_own_reply() -> None:
    async def main() -> None:
        server = App("server", broker="memory://request-reply")
        client = App("client", broker="memory://request-reply")

        @server.responder("double")
        async def double(body: dict[str, int]) -> dict[str, int]:
            return {"n": body["n"] * 2}

        async with server, client:
            # all start before the replies listener runs: none may miss its reply
            answers = await asyncio.gather(*(client.request("double", {"n": n}, timeout=20)
                                             for n in range(50)))
            assert answers == [{"n": 2 * n} for n in range(50)]
            assert await client.request("double", {"n": 7}, timeout=20) == {"n": 14}
            assert not client._replies._waiting

    asyncio.run(main())


def test_an_unanswered_request_times_out_and_is_forgotten() -> None:
    async def main() -> None:
        client = App("lonely", broker="memory://request-timeout")
        async with client:
            began = time.monotonic()
            with pytest.raises(RequestTimeoutError, match=r"'nobody' within 0\.3 s"):
                await client.request("nobody", {}, timeout=0.3)
            assert 0.25 <= time.monotonic() - began < 10
            assert not client._replies._waiting

    asyncio.run(main())
