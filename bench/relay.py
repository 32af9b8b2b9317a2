"""Relay benchmark: signed round trips through the gateway against a plain reverse proxy.

One run, one process tree, loopback only. It creates a temporary state, starts one agency
host (``pasarela agents serve``), one gateway (``pasarela serve``: verification both ways,
receipts, hash-chained SQLite log) and one plain proxy (``bench/plain_proxy.py``), then
drives both paths with the same fixed-concurrency aiohttp client:

    (a) client -> plain proxy -> agency host   no crypto or log in the middle
    (b) client -> gateway     -> agency host   the real relay

The agency host does the same work in both paths (verify the sender's signature and a
gateway receipt, sign an answer): for (a) the client sends a receipt signed with the
gateway's key, which the proxy passes through; for (b) the gateway makes the real one.
Every message is signed before the timed window, with a unique ``jti``. Timed windows
alternate a, b, b, a, a, b, ... so drift on a shared machine hits both paths alike.

    python bench/relay.py [--seconds 10] [--concurrency 64] [--agencies 145]

``--seconds`` is the timed load per path. Exit 0 after printing the results (this is a
benchmark, not a test), 3 when the setup failed (state, servers, or no message got through).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from plain_proxy import TARGET_HEADER  # bench/ is on sys.path when run as a script

from agents import Identity, load_identities, sign_message
from agents.verification import encode_json
from gateway.clock import SystemClock, SystemRandomness
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    TYP_RECEIPT,
    ReceiptClaims,
    body_digest,
    sign_token,
)
from gateway.state import StateDir, StateError, init_state
from pasarela.processes import (
    Child,
    StartupError,
    child_process,
    free_port,
    pasarela_argv,
    wait_healthy,
)

BENCH_DIR: Final = Path(__file__).resolve().parent
PROXY_SCRIPT: Final = BENCH_DIR / "plain_proxy.py"
LIFETIME: Final = 180  # seconds a pre-signed message stays valid; a window is at most 60 s
MAX_WINDOW: Final = 60.0
HEADROOM: Final = 2.5  # messages pre-signed per window, over the best rate seen so far
TARGET_RATIO: Final = 0.30
TARGET_RATE: Final = 2_000.0
EXIT_OK, EXIT_SETUP = 0, 3
PATHS: Final = ("a", "b")
LABELS: Final = {"a": "(a) plain proxy", "b": "(b) gateway"}

Message = tuple[dict[str, str], bytes]


class SetupError(StartupError):
    """The state, a server or the first exchanges failed: nothing worth measuring."""


# -- child processes ------------------------------------------------------------------------


def _print_logs(children: list[Child], lines: int = 40) -> None:
    for child in children:
        print(f"--- {child.name} log ({child.log}), last {lines} lines ---", file=sys.stderr)
        for line in child.tail(lines):
            print(line, file=sys.stderr)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (NaN where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- pre-signed messages --------------------------------------------------------------------


class Signer:
    """Signs messages ahead of time: round-robin senders, varied receivers, unique jtis."""

    def __init__(self, state_dir: Path, *, body_bytes: int) -> None:
        identities = load_identities(state_dir)
        state = StateDir(state_dir)
        try:
            self.gateway_code = state.gateway_code
            self._gateway_key = state.gateway_key
            self._gateway_kid = state.trust.current_keys(state.gateway_code)[-1].kid
            self._endpoints = {code: state.registry.require(code).endpoint for code in identities}
        finally:
            state.close()
        self._identities: list[Identity] = list(identities.values())
        self._body_bytes = body_bytes
        self._run = os.urandom(4).hex()
        self._next = 0

    def batch(self, count: int, *, receipts: bool, tag: str) -> list[Message]:
        """``count`` messages issued now; with ``receipts``, each with a gateway receipt."""
        now = time.time()
        ids, n = self._identities, len(self._identities)
        messages: list[Message] = []
        for k in range(self._next, self._next + count):
            sender = ids[k % n]
            receiver = ids[(k % n + 1 + (k // n) % (n - 1)) % n]  # never the sender
            jti = f"bench-{self._run}-{tag}-{k}"
            head = encode_json({"n": k, "from": sender.code, "pad": ""})
            body = encode_json(
                {"n": k, "from": sender.code, "pad": "x" * max(0, self._body_bytes - len(head))}
            )
            headers = {
                HEADER_SIGNATURE: sign_message(
                    sender,
                    to=receiver.code,
                    service="ping",
                    body=body,
                    jti=jti,
                    now=now,
                    lifetime=LIFETIME,
                ),
                "Content-Type": "application/json",
            }
            if receipts:
                headers[HEADER_RECEIPT] = self._receipt(jti=jti, seq=k + 1, body=body, now=now)
                headers[TARGET_HEADER] = self._endpoints[receiver.code]
            messages.append((headers, body))
        self._next += count
        return messages

    def _receipt(self, *, jti: str, seq: int, body: bytes, now: float) -> str:
        """What the gateway's ``_receipt`` would sign (``lh`` is any 43-char value)."""
        claims = ReceiptClaims(
            iss=self.gateway_code,
            jti=jti,
            seq=seq,
            lh=body_digest(jti.encode()),
            bh=body_digest(body),
            iat=int(now),
        )
        return sign_token(
            claims.as_dict(), self._gateway_key, kid=self._gateway_kid, typ=TYP_RECEIPT
        )


# -- load -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Everything measured on one path over its timed windows."""

    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # 0 = transport error
    latencies: list[float] = field(default_factory=list)  # seconds, HTTP 200 only
    elapsed: float = 0.0
    cpu: Counter[str] = field(default_factory=Counter)  # role -> CPU seconds
    short_windows: int = 0

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _drive(
    session: aiohttp.ClientSession,
    url: str,
    batch: list[Message],
    *,
    seconds: float,
    concurrency: int,
    tally: Tally,
) -> tuple[float, int, bool]:
    """Send from ``batch`` with ``concurrency`` workers until ``seconds`` pass or it runs out.

    Returns the elapsed time (last answer included), the messages sent, whether it ran out.
    """
    counter = itertools.count()
    started = time.perf_counter()
    deadline = started + seconds
    ran_out, sent_total = False, 0

    async def worker() -> None:
        nonlocal ran_out, sent_total
        while True:
            index = next(counter)
            if index >= len(batch):
                ran_out = True
                return
            if time.perf_counter() >= deadline:
                return
            headers, body = batch[index]
            sent_total += 1
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError):
                status = 0
            if status == 200:
                tally.latencies.append(time.perf_counter() - sent)
                tally.ok += 1
            tally.statuses[status] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return elapsed, sent_total, ran_out


@dataclass(slots=True, kw_only=True)
class Bench:
    signer: Signer
    urls: dict[str, str]  # path -> POST URL
    middle: dict[str, Child]  # path -> the process between client and host
    host: Child
    concurrency: int

    def _cpu(self, path: str) -> dict[str, float]:
        return {
            "relay": _cpu_seconds(self.middle[path].process.pid),
            "host": _cpu_seconds(self.host.process.pid),
            "client": time.process_time(),
        }

    async def window(
        self,
        session: aiohttp.ClientSession,
        path: str,
        batch: list[Message],
        seconds: float,
        tally: Tally,
    ) -> tuple[float, int, bool]:
        before = self._cpu(path)
        elapsed, sent, ran_out = await _drive(
            session,
            self.urls[path],
            batch,
            seconds=seconds,
            concurrency=self.concurrency,
            tally=tally,
        )
        after = self._cpu(path)
        for role, start in before.items():
            tally.cpu[role] += after[role] - start
        tally.elapsed += elapsed
        return elapsed, sent, ran_out


def _window_order(rounds: int) -> list[str]:
    """a b | b a | a b | ...: each path goes first in half the rounds."""
    order: list[str] = []
    for r in range(rounds):
        order.extend(PATHS if r % 2 == 0 else PATHS[::-1])
    return order


async def _run_load(bench: Bench, args: argparse.Namespace) -> dict[str, Tally]:
    rounds = max(args.rounds, math.ceil(args.seconds / MAX_WINDOW))
    window = args.seconds / rounds
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    tallies = {path: Tally() for path in PATHS}
    estimate: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for path in PATHS:  # warm-up: connections, caches, and a first estimate of capacity
            batch = bench.signer.batch(args.warmup, receipts=path == "a", tag=f"w{path}")
            warm = Tally()
            elapsed, sent, _ = await _drive(
                session,
                bench.urls[path],
                batch,
                seconds=60.0,
                concurrency=args.concurrency,
                tally=warm,
            )
            if warm.ok == 0:
                raise SetupError(
                    f"warm-up of {LABELS[path]}: no HTTP 200, got {dict(warm.statuses)}"
                )
            estimate[path] = warm.ok / elapsed
            print(
                f"warm-up {LABELS[path]:<16} {sent:>6} messages, {estimate[path]:>7.0f} ok/s"
                f"{'' if warm.errors == 0 else f', errors {dict(warm.statuses)}'}"
            )
        order = " ".join(_window_order(rounds))
        print(f"timed: {rounds} rounds x {window:.1f} s per path, order {order}")
        for number, path in enumerate(_window_order(rounds), start=1):
            count = math.ceil(estimate[path] * window * HEADROOM) + 4 * args.concurrency
            signing = time.perf_counter()
            batch = bench.signer.batch(count, receipts=path == "a", tag=f"{number}{path}")
            signing = time.perf_counter() - signing
            tally = tallies[path]
            ok_before = tally.ok
            elapsed, sent, ran_out = await bench.window(session, path, batch, window, tally)
            rate = (tally.ok - ok_before) / elapsed
            estimate[path] = max(estimate[path], rate)
            tally.short_windows += ran_out
            note = " (ran out of pre-signed messages)" if ran_out else ""
            print(
                f"window {number:>2} {LABELS[path]:<16} {sent:>7} sent, {rate:>7.0f} ok/s "
                f"in {elapsed:5.2f} s (pre-signed {count} in {signing:.1f} s){note}"
            )
            for child in (bench.host, *bench.middle.values()):
                if child.process.poll() is not None:
                    raise SetupError(f"{child.name} died during the load")
    return tallies


# -- report ---------------------------------------------------------------------------------


def _cpu_per_trip(tally: Tally, role: str) -> str:
    value = tally.cpu[role]
    return "-" if math.isnan(value) or not tally.ok else f"{value / tally.ok * 1e6:.0f}"


def _report(tallies: dict[str, Tally], *, args: argparse.Namespace, log_seq: int | None) -> None:
    print()
    print(
        f"{'path':<17}{'requests':>9}{'round trips/s':>15}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'429s':>6}   CPU us per round trip (relay/host/client)"
    )
    for path in PATHS:
        t = tallies[path]
        cpu = "/".join(_cpu_per_trip(t, role) for role in ("relay", "host", "client"))
        print(
            f"{LABELS[path]:<17}{t.ok:>9}{t.rate:>15.0f}{t.percentile_ms(0.50):>9.1f}"
            f"{t.percentile_ms(0.99):>9.1f}{t.errors:>8}{t.statuses[429]:>6}   {cpu}"
        )
    for path in PATHS:
        other = {s: n for s, n in tallies[path].statuses.items() if s != 200}
        if other:
            print(f"  {LABELS[path]} non-200 answers by status (0 = transport error): {other}")
        if tallies[path].short_windows:
            print(f"  {LABELS[path]}: {tallies[path].short_windows} window(s) ran out of messages")
    a, b = tallies["a"].rate, tallies["b"].rate
    ratio = b / a if a else 0.0
    print(f"ratio b/a (gateway / plain proxy throughput): {ratio:.2f}")
    if log_seq is not None:
        print(f"gateway log head after the run: record {log_seq} (2 records per relayed message)")
    print()
    print(
        f"target: ratio >= {TARGET_RATIO:.2f} and >= {TARGET_RATE:,.0f} signed round trips/s "
        "through one gateway process"
    )
    print(f"  ratio b/a            {ratio:>8.2f}   {'PASS' if ratio >= TARGET_RATIO else 'MISS'}")
    print(f"  gateway round trips/s {b:>7.0f}   {'PASS' if b >= TARGET_RATE else 'MISS'}")
    print()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"machine: {os.cpu_count()} CPUs ({affinity} usable), "
        f"{platform.python_implementation()} {platform.python_version()}, aiohttp "
        f"{aiohttp.__version__}, {platform.platform()}, load average {load}"
    )
    print(
        f"settings: concurrency {args.concurrency}, {tallies['a'].elapsed:.1f}/"
        f"{tallies['b'].elapsed:.1f} s timed (a/b), body {args.body_bytes} bytes, "
        f"{args.agencies} agencies + PORTAL; client, proxy, gateway and host share the machine"
    )


async def _log_seq(gateway: Child) -> int | None:
    with contextlib.suppress(aiohttp.ClientError, OSError, KeyError, ValueError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.url}/v1/health") as response,
        ):
            document = await response.json()
            return int(document["checks"]["store"]["log_seq"])
    return None


# -- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed load per path")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--agencies", type=int, default=145, help="central agencies in the state")
    parser.add_argument("--rounds", type=int, default=4, help="timed windows per path")
    parser.add_argument("--warmup", type=int, default=2_000, help="warm-up messages per path")
    parser.add_argument("--body-bytes", type=int, default=256, help="approximate body size")
    return parser


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pasarela-bench-")))
        root = temp / "state"
        children: list[Child] = []
        try:
            ports = {name: free_port() for name in ("host", "gateway", "proxy")}
            agents_url = f"http://127.0.0.1:{ports['host']}"
            init_state(
                root,
                agencies=args.agencies,
                agents_url=agents_url,
                randomness=SystemRandomness(),
                now=SystemClock().now(),
            )
            cli = pasarela_argv()
            state = ["--state", str(root)]
            specs = {
                "agency host": [*cli, "agents", "serve", *state, "--port", str(ports["host"])],
                "gateway": [*cli, "serve", *state, "--port", str(ports["gateway"])],
                "plain proxy": [
                    sys.executable,
                    str(PROXY_SCRIPT),
                    "--port",
                    str(ports["proxy"]),
                    "--upstream",
                    agents_url,
                ],
            }
            port_of = {"agency host": "host", "gateway": "gateway", "plain proxy": "proxy"}
            for name, argv in specs.items():
                log = temp / f"{name.replace(' ', '-')}.log"
                children.append(
                    stack.enter_context(
                        child_process(name, argv, port=ports[port_of[name]], log=log)
                    )
                )
            host, gateway, proxy = children
            for child in children:
                asyncio.run(wait_healthy(child))
            print(
                f"pids: agency host {host.process.pid}, gateway {gateway.process.pid}, "
                f"plain proxy {proxy.process.pid}, client {os.getpid()}"
            )
            signer = Signer(root, body_bytes=args.body_bytes)
            bench = Bench(
                signer=signer,
                urls={"a": f"{proxy.url}/v1/messages", "b": f"{gateway.url}/v1/messages"},
                middle={"a": proxy, "b": gateway},
                host=host,
                concurrency=args.concurrency,
            )
            tallies = asyncio.run(_run_load(bench, args))
        except (StartupError, StateError, OSError, ValueError) as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            _print_logs(children)
            return EXIT_SETUP
        _report(tallies, args=args, log_seq=asyncio.run(_log_seq(gateway)))
        return EXIT_OK


def main() -> int:
    args = _parser().parse_args()
    if min(args.seconds, args.concurrency, args.rounds, args.warmup, args.agencies) <= 0:
        print(
            "--seconds, --concurrency, --rounds, --warmup and --agencies must be positive",
            file=sys.stderr,
        )
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
