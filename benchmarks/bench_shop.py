"""The reference shop end to end on the embedded bus; prints JSON.

Starts every service as its own process (``reference.supervisor``, free ports, a temp
directory), then measures:

* throughput: ``--orders`` orders posted by ``--clients`` concurrent clients, counted
  from the first POST to the last ``ORDER_CONFIRMED`` seen on the bus;
* latency: orders paced at ``--rate`` per second for ``--seconds``, from the start of
  each POST /orders to its ``ORDER_CONFIRMED`` (p50, p99, max), once every consumer group
  has caught up with the throughput run (``settled_s``: how long that took).

The benchmark hears outcomes as a bus subscriber in its own consumer group, so it adds no
polling load to the services. Each client posts its orders over its own keep-alive HTTP/1.1
connection (:class:`OrderPoster`, a few lines over asyncio streams): the load generator
shares the machine with the six services, and posting through one shared httpx client
cost it about 3.5 ms of CPU per order (0.2 ms this way), CPU the shop under test then
did not get (on 2 cores: ~185 orders/s measured through httpx, ~500 this way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402
from reference.client import APPROVE, ShopClient  # noqa: E402
from reference.common.settings import Settings, free_base_port  # noqa: E402
from reference.inventory.catalog import CATALOG  # noqa: E402

from tidings import App, Message, Start  # noqa: E402

#: Reconnect rather than reuse a connection idle this long (uvicorn closes one at 5 s).
KEEP_ALIVE = 3.0


class OrderPoster:
    """One client's keep-alive HTTP/1.1 connection to ``POST /orders``."""

    def __init__(self, settings: Settings) -> None:
        self.host, self.port = settings.host, settings.port("orders")
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._used = 0.0

    async def order(self, user: dict[str, Any], items: list[tuple[str, int]]) -> str:
        """``POST /orders`` as ``user`` with their card token; the new order's id (any
        answer but 202 raises)."""
        body = json.dumps({"user_id": user["id"], "card_token": user["card_token"],
                           "items": [{"sku": sku, "qty": qty} for sku, qty in items]}).encode()
        if self._streams is not None and (self._streams[0].at_eof()
                                          or time.monotonic() - self._used > KEEP_ALIVE):
            await self.close()  # the server closed it, or is about to: idle too long
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(b"POST /orders HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json"
                     b"\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                     % (self.host.encode(), self.port, user["token"].encode(), len(body), body))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
        answer = await reader.readexactly(int(headers["content-length"]))
        if headers.get("connection") == "close":
            await self.close()
        if head[0].split(" ")[1] != "202":
            raise RuntimeError(f"POST /orders answered {head[0]!r}: {answer[:200]!r}")
        self._used = time.monotonic()
        order_id: str = json.loads(answer)["order_id"]
        return order_id

    async def close(self) -> None:
        """Close the connection."""
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


@contextmanager
def running_shop(data_dir: Path, mode: str) -> Iterator[Settings]:
    """Start the supervisor with every service; stop it afterwards."""
    settings = Settings(base_port=free_base_port(), data_dir=data_dir,
                        admin_token=SecretStr(secrets.token_urlsafe(16)))
    log = (data_dir / "supervisor.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "reference.supervisor", "--base-port", str(settings.base_port),
         "--data-dir", str(data_dir), "--mode", mode],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "SHOP_ADMIN_TOKEN": settings.admin_token.get_secret_value()},
    )
    try:
        yield settings
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()


class Outcomes:
    """Hears ``ORDER_CONFIRMED`` / ``ORDER_CANCELLED`` on the bus, with arrival times."""

    def __init__(self, broker: str) -> None:
        self.app = App(f"bench-{os.getpid()}", broker=broker)
        self.done: dict[str, float] = {}
        self.cancelled = 0
        self.changed = asyncio.Event()

        @self.app.subscriber("orders", start=Start.LATEST, concurrency=16)
        async def on_order(event: dict[str, Any], message: Message) -> None:
            if event.get("type") in ("ORDER_CONFIRMED", "ORDER_CANCELLED"):
                self.done.setdefault(event["order_id"], time.perf_counter())
                self.cancelled += event["type"] == "ORDER_CANCELLED"
                self.changed.set()

    async def wait_for(self, order_ids: list[str], timeout: float) -> None:
        """Wait until every order in ``order_ids`` is final."""
        deadline = time.monotonic() + timeout
        while not all(o in self.done for o in order_ids):
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{sum(o not in self.done for o in order_ids)} orders "
                                   "never became final")
            await asyncio.wait_for(self.changed.wait(), left)


async def wait_healthy(shop: ShopClient, timeout: float = 60) -> None:
    """Until every service answers /health."""
    deadline = time.monotonic() + timeout
    for name in ("frontend", "users", "orders", "inventory", "payments", "notifications"):
        while True:
            try:
                await shop.get(name, "/health")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def prepare(shop: ShopClient, users: int) -> list[dict[str, Any]]:
    """Users to order for (each with a token and a card token), and stock that never
    runs out."""
    found = []
    for i in range(users):
        user = await shop.register(f"bench user {i}")
        found.append({**user, "card_token": await shop.card_token(user, APPROVE)})
    for product in CATALOG:
        await shop.set_stock(product.sku, 1_000_000_000)
    return found


async def post(poster: OrderPoster, user: dict[str, Any], n: int) -> tuple[str, float]:
    """Place one order; its id and when the POST started."""
    started = time.perf_counter()
    sku = CATALOG[n % len(CATALOG)].sku
    return await poster.order(user, [(sku, 1 + n % 3)]), started


async def throughput(settings: Settings, outcomes: Outcomes, users: list[dict[str, Any]],
                     orders: int, clients: int) -> dict[str, Any]:
    """Orders per second through the four services, with ``clients`` posting at once."""
    queue = iter(range(orders))
    placed: list[str] = []

    async def client() -> None:
        poster = OrderPoster(settings)
        try:
            for n in queue:
                placed.append((await post(poster, users[n % len(users)], n))[0])
        finally:
            await poster.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    posted = time.perf_counter()
    await outcomes.wait_for(placed, 300)
    finished = max(outcomes.done[o] for o in placed)
    return {"orders": orders, "clients": clients,
            "post_rate": round(orders / (posted - started), 1),
            "orders_per_s": round(orders / (finished - started), 1),
            "seconds": round(finished - started, 2)}


async def latency(settings: Settings, outcomes: Outcomes, users: list[dict[str, Any]], rate: float,
                  seconds: float) -> dict[str, Any]:
    """POST-to-CONFIRMED latency at a paced rate (each POST on a free connection, a new
    one when every open one is busy)."""
    count = int(rate * seconds)
    tasks: list[asyncio.Task[tuple[str, float]]] = []
    idle: list[OrderPoster] = []

    async def paced(n: int) -> tuple[str, float]:
        poster = idle.pop() if idle else OrderPoster(settings)
        result = await post(poster, users[n % len(users)], n)
        idle.append(poster)
        return result

    origin = time.perf_counter()
    for n in range(count):
        await asyncio.sleep(max(0.0, origin + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(paced(n)))
    results = await asyncio.gather(*tasks)
    for poster in idle:
        await poster.close()
    await outcomes.wait_for([order_id for order_id, _ in results], 120)
    samples = sorted((outcomes.done[o] - t) * 1000 for o, t in results)
    return {"orders": count, "rate": rate, "p50_ms": round(_pct(samples, 50), 1),
            "p99_ms": round(_pct(samples, 99), 1), "max_ms": round(samples[-1], 1)}


def _pct(samples: list[float], pct: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * pct / 100))]


async def settle(app: App, timeout: float = 60.0) -> float:
    """Wait until every consumer group on the bus has caught up (the work a burst left
    behind: in orchestration, a saga's last command may still be queued when its order
    is confirmed); how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if sum(p.lag for p in await app.lag(all_groups=True)) == 0:
            break
        await asyncio.sleep(0.2)
    return round(time.monotonic() - started, 2)


async def bench(args: argparse.Namespace, data_dir: Path, mode: str) -> dict[str, Any]:
    """Run both measurements against a fresh shop in ``mode``."""
    with running_shop(data_dir, mode) as settings:
        async with ShopClient(settings) as shop:
            await wait_healthy(shop)
            users = await prepare(shop, 20)
            outcomes = Outcomes(settings.broker_url)
            async with outcomes.app:
                await outcomes.app.wait_until_assigned()
                await throughput(settings, outcomes, users, 200, args.clients)  # warm-up
                result = await throughput(settings, outcomes, users, args.orders, args.clients)
                # The paced run starts from a quiet shop, not from the burst's backlog.
                result["settled_s"] = await settle(outcomes.app)
                paced = await latency(settings, outcomes, users, args.rate, args.seconds)
    return {"mode": mode, "throughput": result, "latency": paced,
            "met": result["orders_per_s"] >= 300 and paced["p99_ms"] <= 500}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Each mode asked for against a fresh shop, one after the other, in this run."""
    modes = ["choreography", "orchestration"] if args.mode == "both" else [args.mode]
    report: dict[str, Any] = {
        "benchmark": "reference shop, end to end", "bus": "embedded sqlite",
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "targets": {"orders_per_s": 300, "p99_ms": 500},
    }
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="bench-shop-") as tmp:
            report[mode] = asyncio.run(bench(args, Path(tmp), mode))
    if len(modes) == 2:
        ours, theirs = report["orchestration"], report["choreography"]
        report["orchestration_over_choreography"] = round(
            ours["throughput"]["orders_per_s"] / theirs["throughput"]["orders_per_s"], 2)
    return report


def main() -> None:
    """Parse options, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mode", default="both",
                        choices=["both", "choreography", "orchestration"])
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
