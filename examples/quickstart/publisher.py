import asyncio

from tidings import App


async def main() -> None:
    async with App("users") as users:
        alice = {"type": "USER_REGISTERED", "userId": 1, "username": "Alice"}
        await users.publish("users", alice, key="user-1")
        bob = {"type": "USER_REGISTERED", "userId": 2, "username": "Bob"}
        await users.publish("users", bob, key="user-2", delay=2)  # durable delayed delivery
        await users.enqueue("emails", {"to": "alice@example.com"}, priority=9)  # 0..9
        print(await users.request("greet", {"name": "Bob"}, timeout=5))


asyncio.run(main())
