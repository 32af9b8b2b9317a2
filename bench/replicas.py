"""Replicas benchmark: one gateway on SQLite against 1, 2 and 4 replicas on PostgreSQL + Redis.

One run, one process tree, loopback only, the same load as ``bench/relay.py`` (a temporary
state, one agency host, every message signed before its window with a unique ``jti``, a
fixed-concurrency aiohttp client). Setups compared, all started before the first window:

    sqlite   one ``pasarela serve`` on the state's SQLite log (the default)
    xN       N replicas of ``pasarela serve --reuse-port --store postgresql://...?schema=
             <one per setup> --cache redis://...?prefix=<one per setup> --replica rN``
             on one port (a hash chain each in the setup's schema, shared trust store and
             registry), the kernel spreading the client's connections (SO_REUSEPORT)

Timed windows go sqlite x1 x2 x4 | x4 x2 x1 sqlite | ... so drift on a shared machine
hits every setup alike. Prints messages/s, p50, p99 and the ratio to the single SQLite
gateway, CPU per message (the gateways, the agency host, this client, PostgreSQL and
Redis), how the kernel spread the load over the replicas, and the log records written.
The schemas and the Redis keys are removed at the end.

    python bench/replicas.py [--seconds 10] [--replicas 1,2,4] [--concurrency 64]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--redis-url redis://127.0.0.1:6379/0]

Needs ``pasarela serve --cache/--replica/--reuse-port``; without them it says so and exits
3. Exit 0 after printing the results (a benchmark, not a test), 3 when the setup failed
(the flags, PostgreSQL or Redis, the state, a server, or no message got through), 2 for bad
options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import _common as common  # bench/ is on sys.path when run as a script
import aiohttp
import asyncpg

from gateway.pgstore import postgres_target
from gateway.state import StateError
from pasarela.processes import (
    Child,
    StartupError,
    child_process,
    free_ports,
    pasarela_argv,
    wait_healthy,
)

DEFAULT_PG: Final = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/0"
NEEDED_FLAGS: Final = ("--cache", "--replica", "--reuse-port")
ROLES: Final = ("host", "client", "postgres", "redis")  # besides the gateways


@dataclass(slots=True, kw_only=True)
class Setup:
    """One way of serving the gateway: a single SQLite process or N replicas on one port."""

    key: str
    replicas: int  # 0: the single SQLite gateway
    port: int
    schemas: list[str] = field(default_factory=list)  # the setup's schema (a chain per replica)
    prefix: str | None = None  # the replicas' shared Redis prefix
    children: list[Child] = field(default_factory=list)

    @property
    def label(self) -> str:
        if not self.replicas:
            return "1 gateway, SQLite"
        plural = "s" if self.replicas > 1 else ""
        return f"{self.replicas} replica{plural}, PostgreSQL + Redis"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- setup ----------------------------------------------------------------------------------


def missing_flags() -> list[str]:
    """The flags this benchmark needs that ``pasarela serve --help`` does not show."""
    result = subprocess.run(
        pasarela_argv("serve", "--help"), capture_output=True, text=True, timeout=120, check=False
    )
    return [
        flag
        for flag in NEEDED_FLAGS
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout)
    ]


async def _check_services(pg_url: str, redis_url: str) -> str:
    """Connect to PostgreSQL and Redis once; their versions, or SetupError."""
    # redis comes with --cache: imported once the flags are known to be there.
    import redis.asyncio as aioredis  # noqa: PLC0415
    from redis.exceptions import RedisError  # noqa: PLC0415

    try:
        conn = await asyncpg.connect(postgres_target(pg_url).dsn, timeout=10)
        try:
            pg_version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        raise common.SetupError(f"PostgreSQL at {pg_url}: {type(exc).__name__}: {exc}") from exc
    client = aioredis.from_url(redis_url, socket_timeout=10)
    try:
        info = await client.info("server")
    except (OSError, RedisError) as exc:
        raise common.SetupError(f"Redis at {redis_url}: {type(exc).__name__}: {exc}") from exc
    finally:
        await client.aclose()
    return f"PostgreSQL {pg_version}, Redis {info.get('redis_version', '?')}"


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port`` (Linux /proc): with
    SO_REUSEPORT a health check on the port may be answered by a sibling instead."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rpartition(":")[2], 16)
                if fields[3] == "0A" and local_port == port and fields[9] in inodes:
                    return True
    return False


async def _wait_listening(child: Child, port: int, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise StartupError(f"{child.name} exited with code {child.process.returncode}")
        if _listening(child.process.pid, port):
            return
        await asyncio.sleep(0.1)
    raise StartupError(f"{child.name} not listening on port {port} after {timeout:.0f}s")


async def _wait_ready(host: Child, setups: list[Setup]) -> None:
    await wait_healthy(host)
    for setup in setups:
        for child in setup.children:
            await _wait_listening(child, setup.port)
        await wait_healthy(setup.children[0], timeout=60.0)


def _start_setups(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    *,
    temp: Path,
    root: Path,
    run_id: str,
    ports: list[int],
) -> list[Setup]:
    """Start the single SQLite gateway and every replica set; they register for cleanup
    (schemas and prefixes) before they start."""
    cli = pasarela_argv("serve", "--state", str(root))
    setups = [Setup(key="sqlite", replicas=0, port=ports[0])]
    for count, port in zip(args.replicas, ports[1:], strict=True):
        setup = Setup(key=f"x{count}", replicas=count, port=port, prefix=f"bench_{run_id}_x{count}")
        setup.schemas = [f"bench_{run_id}_x{count}"]
        setups.append(setup)
    for setup in setups:
        listen = ["--port", str(setup.port)]
        if not setup.replicas:
            argvs = {"gateway (SQLite)": [*cli, *listen]}
        else:
            assert setup.prefix is not None
            cache = common.with_param(args.redis_url, "prefix", setup.prefix)
            argvs = {
                f"gateway {setup.key} r{i}": [
                    *cli,
                    *listen,
                    "--reuse-port",
                    "--store",
                    common.with_param(args.pg_url, "schema", setup.schemas[0]),
                    "--cache",
                    cache,
                    "--replica",
                    f"r{i}",
                ]
                for i in range(1, setup.replicas + 1)
            }
        for name, argv in argvs.items():
            log = temp / (re.sub(r"[^\w]+", "-", name).strip("-") + ".log")
            setup.children.append(
                stack.enter_context(child_process(name, argv, port=setup.port, log=log))
            )
    return setups


async def _cleanup(pg_url: str, redis_url: str, setups: list[Setup]) -> None:
    """Drop the replicas' schemas and delete their Redis keys; say what was left behind."""
    import redis.asyncio as aioredis  # noqa: PLC0415 - as in _check_services

    schemas = [schema for setup in setups for schema in setup.schemas]
    prefixes = [setup.prefix for setup in setups if setup.prefix]
    try:
        conn = await asyncpg.connect(postgres_target(pg_url).dsn, timeout=10)
        try:
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"could not drop schemas {', '.join(schemas)}: {exc}", file=sys.stderr)
    client = aioredis.from_url(redis_url, socket_timeout=10)
    try:
        for prefix in prefixes:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            for start in range(0, len(keys), 500):
                await client.unlink(*keys[start : start + 500])
    except Exception as exc:  # a report at the end, never a crash
        print(f"could not delete Redis keys {', '.join(prefixes)}:*: {exc}", file=sys.stderr)
    finally:
        await client.aclose()


async def _log_records(pg_url: str, setups: list[Setup]) -> dict[str, int | None]:
    """The records each setup's log holds (every replica's chain in its schema)."""
    written: dict[str, int | None] = {}
    conn = await asyncpg.connect(postgres_target(pg_url).dsn, timeout=10)
    try:
        for setup in setups:
            if not setup.replicas:
                written[setup.key] = await common.log_seq(setup.url)
                continue
            total = 0
            for schema in setup.schemas:
                total += await conn.fetchval(f'SELECT count(*) FROM "{schema}".log')
            written[setup.key] = total
    finally:
        await conn.close()
    return written


# -- report ---------------------------------------------------------------------------------


def _gateway_cpu(tally: common.Tally) -> float:
    return sum(value for role, value in tally.cpu.items() if role.startswith("gateway"))


def _report(
    setups: list[Setup],
    tallies: dict[str, common.Tally],
    warmed: dict[str, int],
    written: dict[str, int | None],
    *,
    args: argparse.Namespace,
    services: str,
) -> None:
    width = max(len(setup.label) for setup in setups) + 2
    base = tallies["sqlite"].rate
    print()
    print(
        f"{'setup':<{width}}{'requests':>9}{'msgs/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'429s':>6}{'vs SQLite':>11}"
        "   CPU us per message (gateways/host/client/postgres/redis)"
    )
    for setup in setups:
        t = tallies[setup.key]
        ratio = t.rate / base if base else float("nan")
        cpu = "/".join(
            common.cpu_per_op(value, t.ok)
            for value in (_gateway_cpu(t), *(t.cpu[role] for role in ROLES))
        )
        print(
            f"{setup.label:<{width}}{t.ok:>9}{t.rate:>9.0f}{t.percentile_ms(0.50):>9.1f}"
            f"{t.percentile_ms(0.99):>9.1f}{t.errors:>8}{t.statuses[429]:>6}{ratio:>11.2f}"
            f"   {cpu}"
        )
    common.print_anomalies(tallies, {setup.key: setup.label for setup in setups})
    print()
    print("gateway CPU per replica (how the kernel spread the connections):")
    for setup in setups:
        t = tallies[setup.key]
        total = _gateway_cpu(t)
        if setup.replicas > 1 and total > 0:
            shares = (t.cpu[f"gateway:r{i}"] / total for i in range(1, setup.replicas + 1))
            spread = " ".join(f"r{i} {share:4.0%}" for i, share in enumerate(shares, start=1))
            print(f"  {setup.label:<{width}}{spread}")
    print("log records written (2 per relayed message, warm-up included):")
    for setup in setups:
        relayed = warmed[setup.key] + tallies[setup.key].ok
        records = written[setup.key]
        print(
            f"  {setup.label:<{width}}{'?' if records is None else records:>9} records "
            f"for {relayed} messages relayed"
        )
    print()
    print(common.machine_line(f"aiohttp {aiohttp.__version__}", services))
    timed = "/".join(f"{tallies[setup.key].elapsed:.1f}" for setup in setups)
    print(
        f"settings: concurrency {args.concurrency}, {timed} s timed, body {args.body_bytes} "
        f"bytes, {args.agencies} agencies + PORTAL; client, gateways, host, PostgreSQL and "
        "Redis share the machine; CPU 'postgres' and 'redis' count every such process on it"
    )


# -- main -----------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) <= 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError("a comma-separated list of distinct positive integers")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_load_options(parser, what="setup")
    parser.add_argument(
        "--replicas",
        type=_counts,
        default=[1, 2, 4],
        help="replica counts to compare with the single SQLite gateway (default 1,2,4)",
    )
    parser.add_argument(
        "--pg-url", default=DEFAULT_PG, help=f"PostgreSQL for the replicas (default {DEFAULT_PG})"
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS,
        help=f"Redis for the replicas (default {DEFAULT_REDIS})",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    missing = missing_flags()
    if missing:
        print(
            "needs pasarela serve --cache/--reuse-port: this pasarela's serve has no "
            f"{', '.join(missing)} (see `pasarela serve --help`)",
            file=sys.stderr,
        )
        return common.EXIT_SETUP
    run_id = os.urandom(4).hex()
    setups: list[Setup] = []
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pasarela-bench-")))
        root = temp / "state"
        host: Child | None = None
        try:
            services = asyncio.run(_check_services(args.pg_url, args.redis_url))
            # Registered before any server starts, so it runs after they all stopped.
            stack.callback(lambda: asyncio.run(_cleanup(args.pg_url, args.redis_url, setups)))
            ports = free_ports(2 + len(args.replicas))
            common.make_state(root, agencies=args.agencies, agents_port=ports[0])
            host = stack.enter_context(
                child_process(
                    "agency host",
                    [
                        *pasarela_argv("agents", "serve"),
                        "--state",
                        str(root),
                        "--port",
                        str(ports[0]),
                    ],
                    port=ports[0],
                    log=temp / "agency-host.log",
                )
            )
            setups.extend(
                _start_setups(stack, args, temp=temp, root=root, run_id=run_id, ports=ports[1:])
            )
            asyncio.run(_wait_ready(host, setups))
            gateways = [child for setup in setups for child in setup.children]
            print(
                f"pids: agency host {host.process.pid}, client {os.getpid()}, "
                + ", ".join(f"{child.name} {child.process.pid}" for child in gateways)
            )
            shared = {
                "host": common.pid_probe(host.process.pid),
                "client": common.client_probe(),
                "postgres": common.named_probe("postgres"),
                "redis": common.named_probe("redis-server"),
            }
            targets = [
                common.Target(
                    key=setup.key,
                    label=setup.label,
                    url=f"{setup.url}/v1/messages",
                    cpu={
                        **{
                            f"gateway:r{i}": common.pid_probe(child.process.pid)
                            for i, child in enumerate(setup.children, start=1)
                        },
                        **shared,
                    },
                )
                for setup in setups
            ]
            tallies, warmed = common.measure(root, targets, args, watch=[host, *gateways])
            written = asyncio.run(_log_records(args.pg_url, setups))
        except (StartupError, StateError, OSError, ValueError, asyncpg.PostgresError) as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            children = [child for setup in setups for child in setup.children]
            common.print_logs([host, *children] if host else children)
            return common.EXIT_SETUP
        _report(setups, tallies, warmed, written, args=args, services=services)
        return common.EXIT_OK


def main() -> int:
    return common.load_main(_parser(), run)


if __name__ == "__main__":
    sys.exit(main())
