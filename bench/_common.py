"""What the benchmarks share: pre-signed messages, the fixed-concurrency client, timed
windows that alternate between the things compared, CPU time per process, the machine.

``relay.py`` and ``replicas.py`` drive gateways over HTTP with :func:`run_load`;
``log_append.py`` uses the windows, percentiles, CPU probes and the machine line.
Everything here measures within one run: the machines are shared, so the figures worth
reading are the ratios between things measured side by side.
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
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
from gateway.state import StateDir, init_state
from pasarela.processes import Child, StartupError

__all__ = [
    "EXIT_OK",
    "EXIT_SETUP",
    "MAX_WINDOW",
    "Message",
    "Probe",
    "SetupError",
    "Signer",
    "Tally",
    "Target",
    "add_load_options",
    "client_probe",
    "cpu_delta",
    "cpu_per_op",
    "load_main",
    "log_seq",
    "machine_line",
    "make_state",
    "measure",
    "named_probe",
    "percentile_ms",
    "pid_probe",
    "print_anomalies",
    "print_logs",
    "run_load",
    "window_order",
    "with_param",
]

LIFETIME: Final = 180  # seconds a pre-signed message stays valid; a window is at most 60 s
MAX_WINDOW: Final = 60.0
HEADROOM: Final = 2.5  # messages pre-signed per window, over the best rate seen so far
EXIT_OK, EXIT_SETUP = 0, 3

Message = tuple[dict[str, str], bytes]
#: A snapshot of cumulative CPU seconds by process id (the keys only need to be stable).
Probe = Callable[[], dict[int, float]]


class SetupError(StartupError):
    """The state, a server or the first exchanges failed: nothing worth measuring."""


# -- processes and CPU ----------------------------------------------------------------------


def print_logs(children: Sequence[Child], lines: int = 40) -> None:
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


def pid_probe(*pids: int) -> Probe:
    """CPU time of these processes."""
    return lambda: {pid: _cpu_seconds(pid) for pid in pids}


def named_probe(*names: str) -> Probe:
    """CPU time of every process whose command name is one of ``names`` (``postgres``,
    ``redis-server``): servers outside this process tree, whoever else uses them."""

    def probe() -> dict[int, float]:
        found: dict[int, float] = {}
        with contextlib.suppress(OSError):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_text().strip() in names:
                        found[int(entry.name)] = _cpu_seconds(int(entry.name))
        return found

    return probe


def client_probe() -> Probe:
    """CPU time of this process."""
    return lambda: {0: time.process_time()}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots (a process that started in between counts
    from zero; one that ended is lost)."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def cpu_per_op(seconds: float, ops: int) -> str:
    """CPU microseconds per operation, or ``-`` when unknown."""
    return "-" if math.isnan(seconds) or not ops else f"{seconds / ops * 1e6:.0f}"


def machine_line(*extra: str) -> str:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    parts = [
        f"{os.cpu_count()} CPUs ({affinity} usable)",
        f"{platform.python_implementation()} {platform.python_version()}",
        *extra,
        platform.platform(),
        f"load average {load}",
    ]
    return "machine: " + ", ".join(parts)


# -- windows and percentiles ----------------------------------------------------------------


def window_order(keys: Sequence[str], rounds: int) -> list[str]:
    """a b | b a | a b | ...: the order reverses every round, so drift on a shared machine
    falls on every side alike."""
    order: list[str] = []
    for r in range(rounds):
        order.extend(keys if r % 2 == 0 else reversed(keys))
    return order


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    if not seconds:
        return math.nan
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# -- state and pre-signed messages ---------------------------------------------------------


def make_state(root: Path, *, agencies: int, agents_port: int) -> str:
    """A new state in ``root`` (the gateway's keys, ``agencies`` agencies and the portal)
    whose agencies are served at loopback ``agents_port``; returns their base URL."""
    agents_url = f"http://127.0.0.1:{agents_port}"
    init_state(
        root,
        agencies=agencies,
        agents_url=agents_url,
        randomness=SystemRandomness(),
        now=SystemClock().now(),
    )
    return agents_url


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
        """``count`` messages issued now; with ``receipts``, each with a gateway receipt
        and the receiver's endpoint in ``X-Bench-Target`` (for the plain proxy)."""
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
    """Everything measured on one target over its timed windows."""

    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # 0 = transport error
    latencies: list[float] = field(default_factory=list)  # seconds, HTTP 200 only
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds
    short_windows: int = 0

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def percentile_ms(self, q: float) -> float:
        return percentile_ms(self.latencies, q)

    def non_200(self) -> dict[int, int]:
        return {status: n for status, n in self.statuses.items() if status != 200}


@dataclass(slots=True, kw_only=True)
class Target:
    """One thing compared: where the client posts, and whose CPU counts for it."""

    key: str
    label: str
    url: str  # POST URL
    cpu: dict[str, Probe]  # role -> probe
    receipts: bool = False  # send gateway receipts and X-Bench-Target (the plain proxy)


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


async def _window(
    session: aiohttp.ClientSession,
    target: Target,
    batch: list[Message],
    *,
    seconds: float,
    concurrency: int,
    tally: Tally,
) -> tuple[float, int, bool]:
    before = {role: probe() for role, probe in target.cpu.items()}
    elapsed, sent, ran_out = await _drive(
        session, target.url, batch, seconds=seconds, concurrency=concurrency, tally=tally
    )
    for role, probe in target.cpu.items():
        tally.cpu[role] = tally.cpu.get(role, 0.0) + cpu_delta(before[role], probe())
    tally.elapsed += elapsed
    return elapsed, sent, ran_out


async def run_load(
    signer: Signer,
    targets: Sequence[Target],
    *,
    seconds: float,
    rounds: int,
    warmup: int,
    concurrency: int,
    watch: Sequence[Child],
) -> tuple[dict[str, Tally], dict[str, int]]:
    """Warm every target up, then run timed windows in :func:`window_order`.

    ``seconds`` is the timed load per target, split into at least ``rounds`` windows of at
    most MAX_WINDOW. Messages are signed just before each window, ``HEADROOM`` times what
    the best rate seen so far would use. Raises SetupError if a warm-up gets no HTTP 200 or
    a process in ``watch`` dies. Returns the tallies and the 200s of each warm-up.
    """
    rounds = max(rounds, math.ceil(seconds / MAX_WINDOW))
    window = seconds / rounds
    by_key = {target.key: target for target in targets}
    width = max(len(target.label) for target in targets)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    tallies = {target.key: Tally() for target in targets}
    warmed: dict[str, int] = {}
    estimate: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for target in targets:  # warm-up: connections, caches, a first estimate of capacity
            batch = signer.batch(warmup, receipts=target.receipts, tag=f"w{target.key}")
            warm = Tally()
            elapsed, sent, _ = await _drive(
                session, target.url, batch, seconds=60.0, concurrency=concurrency, tally=warm
            )
            if warm.ok == 0:
                raise SetupError(f"warm-up of {target.label}: no HTTP 200, got {warm.non_200()}")
            warmed[target.key] = warm.ok
            estimate[target.key] = warm.ok / elapsed
            print(
                f"warm-up {target.label:<{width}} {sent:>6} messages, "
                f"{estimate[target.key]:>7.0f} ok/s"
                f"{'' if warm.errors == 0 else f', errors {warm.non_200()}'}"
            )
        order = window_order([target.key for target in targets], rounds)
        print(f"timed: {rounds} rounds x {window:.1f} s per target, order {' '.join(order)}")
        for number, key in enumerate(order, start=1):
            target = by_key[key]
            count = math.ceil(estimate[key] * window * HEADROOM) + 4 * concurrency
            signing = time.perf_counter()
            batch = signer.batch(count, receipts=target.receipts, tag=f"{number}{key}")
            signing = time.perf_counter() - signing
            tally = tallies[key]
            ok_before = tally.ok
            elapsed, sent, ran_out = await _window(
                session, target, batch, seconds=window, concurrency=concurrency, tally=tally
            )
            rate = (tally.ok - ok_before) / elapsed
            estimate[key] = max(estimate[key], rate)
            tally.short_windows += ran_out
            note = " (ran out of pre-signed messages)" if ran_out else ""
            print(
                f"window {number:>2} {target.label:<{width}} {sent:>7} sent, {rate:>7.0f} ok/s "
                f"in {elapsed:5.2f} s (pre-signed {count} in {signing:.1f} s){note}"
            )
            for child in watch:
                if child.process.poll() is not None:
                    raise SetupError(f"{child.name} died during the load")
    return tallies, warmed


def print_anomalies(tallies: dict[str, Tally], labels: dict[str, str]) -> None:
    """Non-200 answers and windows that ran out of messages, per target."""
    for key, tally in tallies.items():
        if tally.non_200():
            print(
                f"  {labels[key]} non-200 answers by status (0 = transport error): "
                f"{tally.non_200()}"
            )
        if tally.short_windows:
            print(f"  {labels[key]}: {tally.short_windows} window(s) ran out of messages")


async def log_seq(url: str) -> int | None:
    """The log head a gateway reports in ``GET /v1/health`` (None if it does not answer)."""
    with contextlib.suppress(aiohttp.ClientError, OSError, KeyError, ValueError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/v1/health") as response,
        ):
            document = await response.json()
            return int(document["checks"]["store"]["log_seq"])
    return None


def with_param(url: str, name: str, value: str) -> str:
    """``url`` with its query parameter ``name`` set to ``value`` (``schema``, ``prefix``)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode([*query, (name, value)])))


# -- options --------------------------------------------------------------------------------


def add_load_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """The options of an HTTP load: ``what`` names one thing compared ("path", "setup")."""
    parser.add_argument("--seconds", type=float, default=10.0, help=f"timed load per {what}")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--agencies", type=int, default=145, help="central agencies in the state")
    parser.add_argument("--rounds", type=int, default=4, help=f"timed windows per {what}")
    parser.add_argument("--warmup", type=int, default=2_000, help=f"warm-up messages per {what}")
    parser.add_argument("--body-bytes", type=int, default=256, help="approximate body size")


def load_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int]) -> int:
    """Parse the options of :func:`add_load_options` (and others), then ``run``: exit 2 when
    one is not positive."""
    args = parser.parse_args()
    if min(args.seconds, args.concurrency, args.rounds, args.warmup, args.agencies) <= 0:
        print(
            "--seconds, --concurrency, --rounds, --warmup and --agencies must be positive",
            file=sys.stderr,
        )
        return 2
    return run(args)


def measure(
    state_dir: Path, targets: Sequence[Target], args: argparse.Namespace, *, watch: Sequence[Child]
) -> tuple[dict[str, Tally], dict[str, int]]:
    """:func:`run_load` in an event loop of its own, messages signed from ``state_dir``, with
    the options of :func:`add_load_options`."""
    return asyncio.run(
        run_load(
            Signer(state_dir, body_bytes=args.body_bytes),
            targets,
            seconds=args.seconds,
            rounds=args.rounds,
            warmup=args.warmup,
            concurrency=args.concurrency,
            watch=watch,
        )
    )
