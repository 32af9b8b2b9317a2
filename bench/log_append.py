"""Log append rate: the message log over SQLite against the same log over PostgreSQL.

One process, one event loop, no HTTP: a :class:`~gateway.log.MessageLog` over a
:class:`~gateway.store.SqliteLogStore` (a temporary file) and one over a
:class:`~gateway.pgstore.PostgresLogStore` (a throwaway schema ``bench_<hex>``, dropped at
the end). N appenders each do what the gateway does per log record: ``append`` (chain the
record) then ``await sync(seq)`` (wait until it is durable); concurrent appenders share a
commit (group commit). For each concurrency, timed windows alternate SQLite, PostgreSQL |
PostgreSQL, SQLite | ... so drift on a shared machine hits both alike.

    python bench/log_append.py [--seconds 5] [--concurrency 1,16,64] [--rounds 4]
                               [--pg-url postgresql://postgres@127.0.0.1:5432/test]

``--seconds`` is the timed appending per backend and concurrency. Prints records/s, p50
and p99 of the append-to-durable latency, records per commit and CPU per record, then the
ratio PostgreSQL/SQLite. Exit 0 after printing (a benchmark, not a test), 3 when the setup
failed (PostgreSQL unreachable, say), 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import asyncpg
from _common import (  # bench/ is on sys.path when run as a script
    EXIT_OK,
    EXIT_SETUP,
    Probe,
    client_probe,
    cpu_delta,
    cpu_per_op,
    machine_line,
    named_probe,
    percentile_ms,
    window_order,
    with_param,
)

from gateway.log import JSONValue, LogEntry, LogRecord, LogStore, MessageLog, StoreUnavailable
from gateway.pgstore import PostgresLogStore, postgres_target
from gateway.store import SqliteLogStore

DEFAULT_PG: Final = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS: Final = ("sqlite", "postgresql")
LABELS: Final = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
WARMUP_SECONDS: Final = 1.0
MAX_WINDOW: Final = 30.0


class CountingStore:
    """A store that counts its writes (commits), so records per commit can be shown."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.writes = 0

    def head(self) -> tuple[int, str] | None:
        return self.store.head()

    def write(self, records: Sequence[LogRecord]) -> Awaitable[None] | None:
        self.writes += 1
        return self.store.write(records)

    def close(self) -> Awaitable[None] | None:
        return self.store.close()


@dataclass(slots=True)
class Tally:
    """One backend at one concurrency, over its timed windows."""

    records: int = 0
    writes: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # append to durable, seconds
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds

    @property
    def rate(self) -> float:
        return self.records / self.elapsed if self.elapsed else 0.0


@dataclass(slots=True, kw_only=True)
class Backend:
    key: str
    log: MessageLog
    store: CountingStore


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


class Entries:
    """Log entries shaped like the gateway's ``request`` records (claims, kid, outcome)."""

    def __init__(self) -> None:
        self._run = os.urandom(4).hex()
        self._counter = itertools.count()
        self._kid = _digest("kid")

    def next(self) -> LogEntry:
        n = next(self._counter)
        fields: dict[str, JSONValue] = {
            "iss": f"AG{n % 145 + 1:03d}",
            "aud": "PORTAL",
            "svc": "ping",
            "jti": f"bench-{self._run}-{n}",
            "bh": _digest(str(n)),
            "kid": self._kid,
            "outcome": "accepted",
        }
        return LogEntry(kind="request", at=time.time(), fields=fields)


async def _append_for(
    backend: Backend, entries: Entries, *, seconds: float, concurrency: int, tally: Tally
) -> float:
    """``concurrency`` appenders, each append + sync until ``seconds`` pass; returns the
    elapsed time (until the last sync returned)."""
    log = backend.log
    started = time.perf_counter()
    deadline = started + seconds

    async def appender() -> None:
        while time.perf_counter() < deadline:
            begun = time.perf_counter()
            record = log.append(entries.next())
            await log.sync(record.seq)
            tally.latencies.append(time.perf_counter() - begun)
            tally.records += 1

    await asyncio.gather(*(appender() for _ in range(concurrency)))
    return time.perf_counter() - started


async def _window(
    backend: Backend,
    entries: Entries,
    *,
    seconds: float,
    concurrency: int,
    tally: Tally,
    probes: dict[str, Probe],
) -> tuple[int, float]:
    before = {role: probe() for role, probe in probes.items()}
    writes, records = backend.store.writes, tally.records
    elapsed = await _append_for(
        backend, entries, seconds=seconds, concurrency=concurrency, tally=tally
    )
    for role, probe in probes.items():
        tally.cpu[role] = tally.cpu.get(role, 0.0) + cpu_delta(before[role], probe())
    tally.writes += backend.store.writes - writes
    tally.elapsed += elapsed
    return tally.records - records, elapsed


async def _measure(
    backends: dict[str, Backend], args: argparse.Namespace
) -> dict[int, dict[str, Tally]]:
    entries = Entries()
    probes = {"bench": client_probe(), "postgres": named_probe("postgres")}
    for key in BACKENDS:  # warm-up: the pool's connections, the file, the caches
        warm = Tally()
        warm.elapsed = await _append_for(
            backends[key], entries, seconds=WARMUP_SECONDS, concurrency=16, tally=warm
        )
        print(f"warm-up {LABELS[key]:<10} {warm.records:>7} records, {warm.rate:>8.0f}/s")
    rounds = max(args.rounds, math.ceil(args.seconds / MAX_WINDOW))
    window = args.seconds / rounds
    order = window_order(BACKENDS, rounds)
    print(f"timed: per concurrency, {rounds} rounds x {window:.2f} s per backend, order")
    print(f"  {' '.join(LABELS[key] for key in order)}")
    results: dict[int, dict[str, Tally]] = {}
    for concurrency in args.concurrency:
        tallies = results[concurrency] = {key: Tally() for key in BACKENDS}
        for number, key in enumerate(order, start=1):
            records, elapsed = await _window(
                backends[key],
                entries,
                seconds=window,
                concurrency=concurrency,
                tally=tallies[key],
                probes=probes,
            )
            print(
                f"concurrency {concurrency:>3} window {number:>2} {LABELS[key]:<10} "
                f"{records:>7} records, {records / elapsed:>8.0f}/s in {elapsed:5.2f} s"
            )
    return results


def _report(results: dict[int, dict[str, Tally]], *, args: argparse.Namespace, server: str) -> None:
    print()
    print(
        f"{'concurrency':>11}  {'backend':<11}{'records':>9}{'records/s':>11}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'per commit':>12}   CPU us per record (bench/postgres)"
    )
    for concurrency, tallies in results.items():
        for key in BACKENDS:
            t = tallies[key]
            per_commit = t.records / t.writes if t.writes else math.nan
            cpu = "/".join(cpu_per_op(t.cpu[role], t.records) for role in ("bench", "postgres"))
            print(
                f"{concurrency:>11}  {LABELS[key]:<11}{t.records:>9}{t.rate:>11.0f}"
                f"{percentile_ms(t.latencies, 0.50):>9.2f}{percentile_ms(t.latencies, 0.99):>9.2f}"
                f"{per_commit:>12.1f}   {cpu}"
            )
    print()
    print("PostgreSQL against SQLite: records/s ratio, sync latency p50 and p99 as multiples")
    for concurrency, tallies in results.items():
        sqlite, pg = tallies["sqlite"], tallies["postgresql"]
        rate = pg.rate / sqlite.rate if sqlite.rate else math.nan

        def latency(q: float, pg: Tally = pg, sqlite: Tally = sqlite) -> float:
            return percentile_ms(pg.latencies, q) / percentile_ms(sqlite.latencies, q)

        print(
            f"  concurrency {concurrency:>3}: records/s {rate:6.2f}   "
            f"p50 x{latency(0.50):.1f}   p99 x{latency(0.99):.1f}"
        )
    print()
    print(machine_line(f"asyncpg {asyncpg.__version__}", server))
    print(
        f"settings: {args.seconds:g} s timed per backend and concurrency; SQLite: WAL, "
        "synchronous=NORMAL (a commit is not fsynced), in this process; PostgreSQL on "
        f"{postgres_target(args.pg_url).shown.partition('?')[0]}; "
        "CPU 'postgres' counts every postgres process on the machine"
    )


async def _server_settings(url: str) -> str:
    conn = await asyncpg.connect(postgres_target(url).dsn, timeout=10)
    try:
        version = await conn.fetchval("SHOW server_version")
        commit = await conn.fetchval("SHOW synchronous_commit")
        fsync = await conn.fetchval("SHOW fsync")
    finally:
        await conn.close()
    return f"PostgreSQL {version} (synchronous_commit={commit}, fsync={fsync})"


async def _drop_schema(url: str) -> None:
    target = postgres_target(url)
    conn = await asyncpg.connect(target.dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')
    finally:
        await conn.close()


async def _run(args: argparse.Namespace, temp: Path) -> int:
    url = with_param(args.pg_url, "schema", f"bench_{os.urandom(4).hex()}")
    backends: dict[str, Backend] = {}
    reachable = False
    try:
        try:
            server = await _server_settings(url)
            reachable = True
            for key in BACKENDS:
                inner: LogStore = (
                    SqliteLogStore(temp / "log.db")
                    if key == "sqlite"
                    else await PostgresLogStore.open(url)
                )
                store = CountingStore(inner)
                backends[key] = Backend(key=key, log=MessageLog(store), store=store)
        except (StoreUnavailable, OSError, ValueError, asyncpg.PostgresError) as exc:
            print(f"setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_SETUP
        print(f"{LABELS['sqlite']}: {temp / 'log.db'}; {LABELS['postgresql']}: {url}")
        results = await _measure(backends, args)
        _report(results, args=args, server=server)
        return EXIT_OK
    finally:
        for backend in backends.values():
            with contextlib.suppress(Exception):
                await backend.log.aclose()
        try:
            if reachable:
                await _drop_schema(url)
        except (OSError, asyncpg.PostgresError) as exc:
            schema = postgres_target(url).schema
            print(f"could not drop schema {schema}: {exc}", file=sys.stderr)


def _concurrencies(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="timed appending per backend and concurrency"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrencies,
        default=[1, 16, 64],
        help="appenders, comma-separated (default 1,16,64)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="timed windows per backend")
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG,
        help=f"PostgreSQL server and database (default {DEFAULT_PG}; ?schema= is replaced)",
    )
    return parser


def main() -> int:
    args = _parser().parse_args()
    if args.seconds <= 0 or args.rounds <= 0:
        print("--seconds and --rounds must be positive", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pasarela-bench-log-") as temp:
        return asyncio.run(_run(args, Path(temp)))


if __name__ == "__main__":
    sys.exit(main())
