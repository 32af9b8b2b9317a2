"""Crash safety: a gateway killed with SIGKILL mid-stream loses no acknowledged message.

One real ``pasarela serve`` process over one state and one log is killed with SIGKILL
while messages stream through it, restarted, and killed again: three cycles, so the hash
chain spans every crash. For each log backend this proves:

1. **The chain survives a crash.** ``pasarela log verify`` passes on the log as each crash
   left it, and at the end.
2. **Nothing is acknowledged before it is durable.** Every answer a sender saw acknowledged
   (2xx, the receiver's signature and the gateway's ``Pasarela-Receipt`` verified) names,
   by its receipt's ``seq`` and ``lh``, a ``response`` record for its ``jti`` that is in
   the log read right after the crash, with the message's ``request`` record before it.
   Likewise every receipt the receiver was delivered names the message's ``request``
   record in that log: nothing is forwarded before its request record is durable.
3. **No receiver runs a message twice.** The receiving agency (an ``AgencyHost`` served by
   this test, so it outlives the gateway) counts its service runs per ``jti``: every count
   is exactly 1, although the restarted gateway, whose memory of messages dies with it
   (protocol section 8), delivers every retry again.
4. **Retrying after a restart is safe.** A message acknowledged before the crash, sent
   again with the same ``jti`` and body, gets the same status, body and receiver
   ``Pasarela-Signature``. A message sent but not acknowledged before the crash is retried
   until acknowledged; its answer is the one the receiver's single run produced.

Load: two sending agencies with two concurrent senders each, all to a third agency. Each
cycle kills the gateway once a seeded random number (30 to 90) of messages have been
acknowledged, at one of three places: inside the receiver's service (the message's request
record is durable, its response record not yet written), right after a sender's
acknowledgement, or a random few milliseconds later (anywhere in the relay). Other
messages are in flight at every kill. ``PASARELA_CRASH_SEED`` replays a run's choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509

from agents.host import AgencyHost
from agents.verification import (
    Directory,
    Identity,
    encode_json,
    sign_message,
    verify_conf,
    verify_message,
    verify_receipt,
)
from gateway.clock import SystemClock, SystemRandomness
from gateway.log import LogRecord
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    LEEWAY_SECONDS,
    TYP_RECEIPT,
    MessageClaims,
    ProtocolError,
    parse_compact,
    receipt_claims,
)
from gateway.state import init_state
from pasarela.processes import Child, child_process, free_ports, pasarela_argv, wait_healthy
from tests.durability.conftest import LogUnderTest

SEED = int(os.environ.get("PASARELA_CRASH_SEED", "20150101"))
RECEIVER = "AG003"
SENDERS = ("AG001", "AG002")
SENDERS_PER_AGENCY = 2
KILL_SITES = ("receiver", "sender", "timer")  # one cycle each, in this order
MESSAGES_PER_CYCLE = 400  # a cap: the kill comes long before
LIFETIME = 120  # seconds a sender's token lives: the receiver remembers answers that long
RETRY_ATTEMPTS = 50
CLOCK = SystemClock()
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass(frozen=True, slots=True)
class Message:
    sender: str
    jti: str
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """An answer the sender verified: the receiver's signed response and its receipt."""

    status: int
    body: bytes
    signature: str
    seq: int  # the receipt's: the response record's place in the log
    lh: str  # the receipt's: that record's hash


@dataclass(frozen=True, slots=True)
class Refusal:
    """Any other answer (problem+json from the gateway)."""

    status: int
    body: bytes


Outcome = Ack | Refusal | None  # None: no answer at all (the connection failed)


class KillSwitch:
    """SIGKILLs the gateway once ``threshold`` messages are acknowledged, at ``site``."""

    def __init__(self, child: Child, *, site: str, threshold: int, delay: float) -> None:
        self.child = child
        self.site = site
        self.threshold = threshold
        self.delay = delay
        self.acks = 0
        self.where = ""
        self.fired = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    def acknowledged(self, jti: str) -> None:
        """A sender saw ``jti`` acknowledged."""
        self.acks += 1
        if self.acks < self.threshold:
            return
        if self.site == "sender":
            self.fire(f"right after {jti} was acknowledged")
        elif self.site == "timer" and self._timer is None:
            where = f"{self.delay * 1000:.1f} ms after {jti} was acknowledged"
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.fire, where)

    def servicing(self, jti: str) -> None:
        """The receiver runs its service for ``jti``: forwarded, not yet answered."""
        if self.site == "receiver" and self.acks >= self.threshold:
            self.fire(f"while the receiver ran the service for {jti}")

    def fire(self, where: str) -> None:
        if not self.fired.is_set():
            self.child.process.kill()
            self.where = where
            self.fired.set()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the receipt on a forwarded message names: the message's request record."""

    jti: str
    seq: int
    lh: str


class Receiver:
    """The receiving agency: an ``AgencyHost`` whose one service counts its runs per jti.

    The answer body carries the running total of service runs, so an answer produced by a
    second run could not pass for the first one. The receipt of every delivery is noted
    (the host verifies it).
    """

    def __init__(self, identity: Identity, directory: Directory) -> None:
        self.runs: Counter[str] = Counter()
        self.answers: dict[str, bytes] = {}
        self.deliveries: list[Delivery] = []
        self.switch: KillSwitch | None = None
        self.host = AgencyHost(
            identities={identity.code: identity},
            directory=directory,
            clock=CLOCK,
            randomness=SystemRandomness(),
            services={"ping": self._service},
            lifetime=LIFETIME,
        )

    def app(self) -> web.Application:
        app = self.host.app()
        app.middlewares.append(self._note_receipt)
        return app

    @web.middleware
    async def _note_receipt(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.headers.get(HEADER_RECEIPT)
        with contextlib.suppress(ProtocolError):  # the host refuses it: an unexpected answer
            if token is not None:
                receipt = receipt_claims(parse_compact(token, typ=TYP_RECEIPT))
                self.deliveries.append(Delivery(receipt.jti, receipt.seq, receipt.lh))
        return await handler(request)

    async def _service(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        self.runs[claims.jti] += 1
        answer = encode_json({"recibido": claims.jti, "run": self.runs.total()})
        self.answers.setdefault(claims.jti, answer)
        if self.switch is not None:
            self.switch.servicing(claims.jti)
        return 200, answer


@dataclass(slots=True, kw_only=True)
class Senders:
    """The sending agencies' side: sign, post, verify; every acknowledgement seen."""

    identities: dict[str, Identity]
    directory: Directory
    session: aiohttp.ClientSession
    url: str
    acks: list[tuple[str, Ack]] = field(default_factory=list)  # (jti, ack), every one
    unexpected: list[str] = field(default_factory=list)

    async def send_once(self, message: Message) -> Outcome:
        """One attempt: sign now, post, verify a 2xx answer and its receipt."""
        token = sign_message(
            self.identities[message.sender],
            to=RECEIVER,
            service="ping",
            body=message.body,
            jti=message.jti,
            now=CLOCK.now(),
            lifetime=LIFETIME,
        )
        headers = {HEADER_SIGNATURE: token, "Content-Type": "application/json"}
        try:
            async with self.session.post(
                f"{self.url}/v1/messages", data=message.body, headers=headers
            ) as response:
                status, body = response.status, await response.read()
                signature = response.headers.get(HEADER_SIGNATURE)
                receipt = response.headers.get(HEADER_RECEIPT)
        except (aiohttp.ClientError, TimeoutError):
            return None
        if not 200 <= status < 300 or receipt is None or signature is None:
            return Refusal(status, body)
        claims = verify_message(
            signature, body, self.directory, part="response", now=CLOCK.now(), leeway=LEEWAY_SECONDS
        )
        assert (claims.iss, claims.aud, claims.corr) == (RECEIVER, message.sender, message.jti)
        checked = verify_receipt(
            receipt, self.directory, jti=claims.jti, bh=claims.bh, corr=message.jti
        )
        ack = Ack(status=status, body=body, signature=signature, seq=checked.seq, lh=checked.lh)
        self.acks.append((message.jti, ack))
        return ack

    async def send_until_acknowledged(self, message: Message) -> Ack | None:
        """Retry with the same jti and body while the gateway is unavailable."""
        for _ in range(RETRY_ATTEMPTS):
            outcome = await self.send_once(message)
            if isinstance(outcome, Ack):
                return outcome
            if isinstance(outcome, Refusal) and outcome.status not in (429, 503):
                self.unexpected.append(
                    f"{message.jti} after the restart: HTTP {outcome.status} {outcome.body[:300]!r}"
                )
                return None
            await asyncio.sleep(0.1)
        self.unexpected.append(f"{message.jti}: not acknowledged in {RETRY_ATTEMPTS} attempts")
        return None

    async def retry_all(self, messages: list[Message]) -> list[Ack | None]:
        """Every message retried until acknowledged, as many at a time as there are senders."""
        gate = asyncio.Semaphore(len(SENDERS) * SENDERS_PER_AGENCY)

        async def retry(message: Message) -> Ack | None:
            async with gate:
                return await self.send_until_acknowledged(message)

        return await asyncio.gather(*(retry(message) for message in messages))

    async def load_until(
        self, switch: KillSwitch, cycle: int
    ) -> tuple[list[tuple[Message, Ack]], list[Message]]:
        """Stream messages until the kill: (acknowledged, sent but not acknowledged)."""
        acknowledged: list[tuple[Message, Ack]] = []
        unacknowledged: list[Message] = []
        numbers = itertools.count()

        async def sender(code: str) -> None:
            while not switch.fired.is_set() and (n := next(numbers)) < MESSAGES_PER_CYCLE:
                jti = f"{code}-c{cycle}-m{n:04d}"
                size = random.Random(jti).randrange(10, 2000)
                message = Message(code, jti, encode_json({"n": n, "de": code, "texto": "x" * size}))
                outcome = await self.send_once(message)
                if isinstance(outcome, Ack):
                    acknowledged.append((message, outcome))
                    switch.acknowledged(jti)
                    continue
                unacknowledged.append(message)
                if outcome is None:
                    return  # the gateway is gone
                if outcome.status not in (429, 503):
                    self.unexpected.append(
                        f"{jti} before the kill: HTTP {outcome.status} {outcome.body[:300]!r}"
                    )

        await asyncio.gather(*(sender(code) for code in SENDERS for _ in range(SENDERS_PER_AGENCY)))
        switch.disarm()
        return acknowledged, unacknowledged


class GatewayProcess:
    """``pasarela serve`` over the test's state, on a fresh port at each start."""

    def __init__(self, log: LogUnderTest, logs: Path, stack: contextlib.ExitStack) -> None:
        self._log = log
        self._logs = logs
        self._stack = stack
        self.starts = 0
        self.child: Child | None = None

    async def start(self) -> Child:
        self.starts += 1
        (port,) = free_ports(1)
        argv = pasarela_argv(
            "serve", "--state", str(self._log.state), "--port", str(port), *self._log.serve_args
        )
        name, output = f"gateway (start {self.starts})", self._logs / f"gateway-{self.starts}.log"
        self.child = self._stack.enter_context(child_process(name, argv, port=port, log=output))
        await wait_healthy(self.child)
        return self.child

    async def ended(self, *, terminate: bool = False) -> int:
        """Wait for the process to end (after SIGTERM when ``terminate``); its exit code."""
        assert self.child is not None
        if terminate:
            self.child.process.terminate()
        return await asyncio.to_thread(self.child.process.wait, 20)


async def _fetch_directory(url: str, state: Path, session: aiohttp.ClientSession) -> Directory:
    """The gateway's configuration document, verified against the platform CA."""
    ca = x509.load_pem_x509_certificate((state / "ca" / "cert.pem").read_bytes())
    async with session.get(f"{url}/v1/conf") as response:
        assert response.status == 200
        body, signature = await response.read(), response.headers.get(HEADER_SIGNATURE)
    return verify_conf(body=body, signature=signature, now=CLOCK.now(), ca_certificate=ca)


async def _verify_log(log: LogUnderTest) -> dict[str, object]:
    """``pasarela log verify --json`` on the log, as an auditor would run it."""
    process = await asyncio.create_subprocess_exec(
        *pasarela_argv("log", "verify", "--json", *log.verify_args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, f"log verify exited {process.returncode}: {out!r} {err!r}"
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def _unlogged(
    records: list[LogRecord], acks: Iterable[tuple[str, Ack]], deliveries: Iterable[Delivery]
) -> list[str]:
    """Acknowledgements and deliveries whose receipt names no matching record in ``records``."""
    by_seq = {record.seq: record for record in records}
    first_request: dict[object, int] = {}
    for each in records:
        if each.kind == "request":
            first_request.setdefault(each.fields.get("jti"), each.seq)
    head = records[-1].seq if records else 0

    def found(seq: int) -> str:
        record = by_seq.get(seq)
        if record is None:
            return f"the log ends at record {head}"
        return f"the log's record {seq} is {record.kind} {dict(record.fields)} (lh {record.hash})"

    problems = []
    for jti, ack in acks:
        record = by_seq.get(ack.seq)
        if record is None or (record.kind, record.fields.get("corr"), record.hash) != (
            "response",
            jti,
            ack.lh,
        ):
            problems.append(
                f"{jti}: acknowledged with a receipt for record {ack.seq} (lh {ack.lh}); "
                f"{found(ack.seq)}"
            )
        request = first_request.get(jti)
        if request is None or request > ack.seq:
            problems.append(f"{jti}: no request record before its response record {ack.seq}")
    for delivery in deliveries:
        record = by_seq.get(delivery.seq)
        if record is None or (record.kind, record.fields.get("jti"), record.hash) != (
            "request",
            delivery.jti,
            delivery.lh,
        ):
            problems.append(
                f"{delivery.jti}: delivered to the receiver with a receipt for record "
                f"{delivery.seq} (lh {delivery.lh}); {found(delivery.seq)}"
            )
    return problems


@dataclass(slots=True, kw_only=True)
class Rig:
    """The gateway process, its senders and its receiver, and what went wrong so far."""

    log: LogUnderTest
    gateway: GatewayProcess
    senders: Senders
    receiver: Receiver
    problems: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    async def check_log(self, when: str) -> list[LogRecord]:
        """The log verifies, and holds every acknowledged and delivered message."""
        verdict = await _verify_log(self.log)
        assert verdict["ok"], f"{when}: the log does not verify: {verdict}"
        records = await self.log.records()
        unlogged = _unlogged(records, self.senders.acks, self.receiver.deliveries)
        self.problems += [f"{when}: {problem}" for problem in unlogged]
        return records

    async def crash_and_recover(self, cycle: int, site: str, rng: random.Random) -> None:
        """Load, SIGKILL, check the log, restart, retry every message of the cycle."""
        assert self.gateway.child is not None
        threshold, delay = rng.randint(30, 90), rng.uniform(0.0, 0.02)
        switch = KillSwitch(self.gateway.child, site=site, threshold=threshold, delay=delay)
        self.receiver.switch = switch
        acked, unacked = await self.senders.load_until(switch, cycle)
        self.receiver.switch = None
        assert switch.fired.is_set(), f"cycle {cycle}: the load ended before the kill"
        code = await self.gateway.ended()
        assert code == -signal.SIGKILL, f"cycle {cycle}: the gateway exited {code}, not killed"
        already_run = sum(1 for message in unacked if self.receiver.runs[message.jti])
        if site == "receiver":  # the message whose service saw the kill, at least
            assert already_run >= 1, f"cycle {cycle}: no message was run but not acknowledged"
        await self.check_log(f"cycle {cycle}, killed {switch.where}")

        self.senders.url = (await self.gateway.start()).url
        again = await self.senders.retry_all([message for message, _ in acked])
        for (message, first), second in zip(acked, again, strict=True):
            if second is not None and (second.status, second.body, second.signature) != (
                first.status,
                first.body,
                first.signature,
            ):
                self.problems.append(
                    f"cycle {cycle}: {message.jti} was acknowledged before the kill with "
                    f"{first.status} {first.body!r}, after the restart with {second.status} "
                    f"{second.body!r} (same signature: {second.signature == first.signature})"
                )
        late = await self.senders.retry_all(unacked)
        for message, ack in zip(unacked, late, strict=True):
            produced = self.receiver.answers.get(message.jti)
            if ack is not None and ack.body != produced:
                self.problems.append(
                    f"cycle {cycle}: {message.jti}, in flight at the kill, was acknowledged "
                    f"with {ack.body!r}; the receiver's run produced {produced!r}"
                )
        self.summary.append(
            f"cycle {cycle}: killed {switch.where}, {switch.acks} acknowledged (threshold "
            f"{threshold}), {len(unacked)} in flight of which {already_run} already run"
        )


@contextlib.asynccontextmanager
async def _rig(log: LogUnderTest, logs: Path) -> AsyncIterator[Rig]:
    """A fresh state (3 agencies), its gateway started, the receiver served by this test."""
    (receiver_port,) = free_ports(1)
    init_state(
        log.state,
        agencies=3,
        agents_url=f"http://127.0.0.1:{receiver_port}",
        randomness=SystemRandomness(),
        now=CLOCK.now(),
    )
    agencies = log.state / "agencies"
    identities = {
        code: Identity.from_files(agencies / code / "key.pem", agencies / code / "cert.pem")
        for code in (*SENDERS, RECEIVER)
    }
    with contextlib.ExitStack() as stack:
        gateway = GatewayProcess(log, logs, stack)
        child = await gateway.start()
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            directory = await _fetch_directory(child.url, log.state, session)
            receiver = Receiver(identities[RECEIVER], directory)
            runner = web.AppRunner(receiver.app(), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", receiver_port).start()
                senders = Senders(
                    identities=identities, directory=directory, session=session, url=child.url
                )
                yield Rig(log=log, gateway=gateway, senders=senders, receiver=receiver)
            finally:
                await runner.cleanup()


async def test_a_killed_gateway_loses_no_acknowledged_message_and_runs_none_twice(
    log_under_test: LogUnderTest, tmp_path: Path
) -> None:
    """SIGKILL mid-stream, three times: chain intact, acks durable, retries safe, no rerun."""
    started = time.monotonic()
    rng = random.Random(SEED)
    async with _rig(log_under_test, tmp_path) as rig:
        for cycle, site in enumerate(KILL_SITES):
            await rig.crash_and_recover(cycle, site, rng)
        code = await rig.gateway.ended(terminate=True)
        assert code == 0, f"the gateway exited {code} on SIGTERM"
        records = await rig.check_log("at the end")
    runs, acks = rig.receiver.runs, rig.senders.acks
    acknowledged = {jti for jti, _ in acks}
    print(
        f"\n[{log_under_test.backend}] seed {SEED}: {len(acknowledged)} messages, "
        f"{len(acks)} acknowledgements, {len(rig.receiver.deliveries)} deliveries, "
        f"{len(records)} log records, {rig.gateway.starts} gateway starts, "
        f"{time.monotonic() - started:.1f} s",
        *rig.summary,
        sep="\n  ",
    )
    assert not rig.senders.unexpected, rig.senders.unexpected
    assert not rig.problems, rig.problems
    twice = {jti: n for jti, n in runs.items() if n != 1}
    assert not twice, f"the receiver ran these messages more than once: {twice}"
    assert acknowledged == set(runs), (
        f"acknowledged, never run: {sorted(acknowledged - set(runs))}; "
        f"run, never acknowledged: {sorted(set(runs) - acknowledged)}"
    )
