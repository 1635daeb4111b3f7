"""Saga benchmark: tidings' saga engine against DBOS Transact, the same work, one run.

Prints one JSON document. Each contender runs N durable workflows of three no-op async
steps, started C at a time (a new one starts as soon as one finishes), on a fresh
SQLite file (and PostgreSQL with ``--postgres``), and reports workflows/s (N over the
wall time from the first start to the last completion) and CPU per workflow (the
process's user+system time over N, so the database driver's threads count too).

- ``tidings``: a :class:`~tidings.saga.Saga` of three local steps (each needs a
  compensation, but none runs), started inside a transaction of the service's database
  (``GroupCommit.run`` with ``engine.start(..., within=conn)``: the saga exists iff the
  transaction commits), then ``engine.wait``. SQLite through
  :func:`~tidings.sqlalchemy.sqlite_engine`; the bus is the memory backend (the steps
  send nothing).
- ``dbos``: DBOS Transact (``@DBOS.workflow`` of three ``@DBOS.step``), started with
  ``DBOS.start_workflow_async`` and awaited with ``handle.get_result()``; its system
  database on a SQLite file (its default) or the same PostgreSQL. DBOS runs in a
  throwaway venv, never in the project's: ``--dbos-python PATH`` (by hand:
  ``python -m venv /tmp/tidings-dbos-venv && /tmp/tidings-dbos-venv/bin/pip install dbos``).

Each contender runs ``--repeat`` times, in turns; the best run is reported with every
run's rate, and the ratios compare the best runs of this one invocation.

Usage: python benchmarks/bench_saga.py [--n 2000] [--concurrency 64] [--repeat 2]
       [--dbos-python PATH] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tidings import App, testing
from tidings.saga import Saga, SagaEngine, SagaStatus, Step
from tidings.sqlalchemy import GroupCommit, SqlSagaStore, create_tables, sqlite_engine

ROOT = Path(__file__).resolve().parent.parent


class Work(BaseModel):
    """The workflow's input."""

    n: int


async def nothing(state: Work) -> None:
    """A no-op step."""


SAGA = Saga("bench", Work, [Step(f"step-{i}", nothing, compensation=nothing) for i in range(3)])


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


async def _tidings(url: str, n: int, concurrency: int) -> dict[str, Any]:
    engine = sqlite_engine(url[len("sqlite:"):]) if url.startswith("sqlite:") else \
        create_async_engine(url, pool_size=10, max_overflow=10)
    await create_tables(engine)
    app = App("bench-saga", broker=testing.memory_url())
    sagas = SagaEngine(app, SqlSagaStore(engine), [SAGA], max_running=concurrency * 2)
    commits = GroupCommit.of(engine)
    gate = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            async def begin(conn: AsyncConnection) -> str:
                return await sagas.start(SAGA, Work(n=i), within=conn)

            saga_id = await commits.run(begin)
            record = await sagas.wait(saga_id, timeout=120)
            failed += record.status is not SagaStatus.COMPLETED

    async with app:
        cpu, start = _cpu(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall, cpu = time.perf_counter() - start, _cpu() - cpu
    await engine.dispose()
    return _figures(n, wall, cpu, failed)


def _figures(n: int, wall: float, cpu: float, failed: int) -> dict[str, Any]:
    return {"workflows": n, "failed": failed, "workflows_per_s": round(n / wall, 1),
            "cpu_ms_per_workflow": round(cpu / n * 1e3, 3)}


DBOS = r"""
import asyncio, json, os, sys, time
from dbos import DBOS, DBOSConfig

url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
DBOS(config=DBOSConfig(name="bench_saga", system_database_url=url))

@DBOS.step()
async def step(i: int) -> int:
    return i

@DBOS.workflow()
async def workflow(i: int) -> int:
    for _ in range(3):
        await step(i)
    return i

async def main() -> None:
    DBOS.launch()
    gate = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            handle = await DBOS.start_workflow_async(workflow, i)
            failed += await handle.get_result() != i

    times = os.times()
    cpu, start = times.user + times.system, time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - start
    times = os.times()
    print(json.dumps({"wall": wall, "cpu": times.user + times.system - cpu, "failed": failed}))
    DBOS.destroy()

asyncio.run(main())
"""


def _dbos(python: str | None, url: str, n: int, concurrency: int) -> dict[str, Any]:
    if python is None:
        return {"skipped": "no --dbos-python (a venv with dbos)"}
    out = subprocess.run([python, "-c", DBOS, url, str(n), str(concurrency)],
                         capture_output=True, text=True, timeout=1200, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-2000:]}
    data = json.loads(lines[-1])
    return _figures(n, data["wall"], data["cpu"], data["failed"])


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "workflows_per_s" in r]
    if not good:
        return runs[-1]
    best = dict(max(good, key=lambda r: r["workflows_per_s"]))
    best["runs_workflows_per_s"] = [r["workflows_per_s"] for r in good]
    return best


def _ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float] | None:
    if "workflows_per_s" not in ours or "workflows_per_s" not in theirs:
        return None
    return {"throughput": round(ours["workflows_per_s"] / theirs["workflows_per_s"], 2),
            "cpu": round(theirs["cpu_ms_per_workflow"] / ours["cpu_ms_per_workflow"], 2)}


def _sqlite_urls(directory: Path, run: int) -> tuple[str, str]:
    return f"sqlite:{directory}/tidings-{run}.db", f"sqlite:///{directory}/dbos-{run}.db"


def main() -> None:
    """Run the contest and print the JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dbos-python", default=os.environ.get("DBOS_PYTHON"))
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"workflow": "3 no-op steps, started in a transaction",
                              "n": args.n, "concurrency": args.concurrency, "target": 10}
    with tempfile.TemporaryDirectory() as directory:
        counter = iter(range(1_000_000))
        result["sqlite"] = _contest_fresh("sqlite", lambda: _sqlite_urls(
            Path(directory), next(counter)), args)
        if args.postgres:
            result["postgresql"] = _postgres(args)
    print(json.dumps(result, indent=2))


def _contest_fresh(kind: str, urls: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Like _contest, with fresh databases for every run."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        tidings_url, dbos_url = urls()
        ours.append(asyncio.run(_tidings(tidings_url, args.n, args.concurrency)))
        theirs.append(_dbos(args.dbos_python, dbos_url, args.n, args.concurrency))
    tidings, dbos = _best(ours), _best(theirs)
    return {"database": kind, "tidings": tidings, "dbos": dbos,
            "tidings_over_dbos": _ratio(tidings, dbos)}


def _postgres(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres_server import fresh_database, running_postgres  # type: ignore[import-not-found]

    with running_postgres() as server:
        return _contest_fresh("postgresql", lambda: (
            fresh_database(server),
            fresh_database(server).replace("postgresql+asyncpg://", "postgresql://"),
        ), args)


if __name__ == "__main__":
    main()
