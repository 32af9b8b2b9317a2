"""Techniques against the platform around the token: probing for agencies and services,
HTTP-level floods and slow clients, framing, switched-off and distrusted keys, forged
receipts and answers, log tampering, and the operators' admin API."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.adversaries.lab import Lab, LabError
from agents.adversaries.model import Expected, Observation, Reference, Run, Technique
from gateway.log import Verification, canonical_json, verify
from gateway.operators import mint_operator_token
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    TYP_RECEIPT,
    ProblemCode,
    ReceiptClaims,
    b64url_decode,
    b64url_encode,
    body_digest,
    sign_token,
)
from gateway.state import OPERATOR_NAME
from gateway.store import SqliteLogStore
from gateway.trust import build_csr

__all__ = ["PLATFORM_TECHNIQUES"]

_API2 = "API2:2023 Broken Authentication"
_API4 = "API4:2023 Unrestricted Resource Consumption"
_FORGE = "T1606 Forge Web Credentials"
_VALID = "T1078 Valid Accounts"


def _refused(*codes: str, alert: bool = True, **more: bool) -> Expected:
    """Refused with one of ``codes``, and (``alert``) an alert of one of those kinds."""
    kinds = frozenset(codes) if alert else frozenset()
    return Expected(codes=frozenset(codes), alert=alert, alert_kinds=kinds, **more)


# -- what /v1/conf publishes -------------------------------------------------------------------


async def _conf(lab: Lab) -> dict[str, Any]:
    """The configuration document as the gateway publishes it now (``lab.conf`` is a
    snapshot taken when the lab started)."""
    status, _, document = await lab.post("/v1/conf", method="GET")
    if status != 200 or not isinstance(document, dict):
        raise LabError(f"GET /v1/conf: HTTP {status}")
    return document


def _published(conf: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Agency codes /v1/conf names (its ``agencies`` list, and the gateway's own code),
    with the services each offers.

    ``Lab.published_agencies`` reads ``agencies`` as a mapping and a ``keys`` member the
    document does not have; ``agencies`` is a list of objects with a ``code``.
    """
    published: dict[str, frozenset[str]] = {}
    for agency in conf.get("agencies", []):
        if isinstance(agency, Mapping) and isinstance(agency.get("code"), str):
            published[agency["code"]] = frozenset(str(s) for s in agency.get("services", []))
    gateway = conf.get("gateway")
    if isinstance(gateway, Mapping) and isinstance(gateway.get("code"), str):
        published.setdefault(gateway["code"], frozenset())
    return published


def _allowed(conf: Mapping[str, Any], client: str, provider: str, service: str) -> bool:
    """Whether the published registry lets ``client`` call ``provider``/``service``."""
    if service not in _published(conf).get(provider, frozenset()):
        return False
    return any(
        grant.get("client") in ("*", client)
        and grant.get("provider") in ("*", provider)
        and grant.get("service") in ("*", service)
        for grant in conf.get("grants", [])
        if isinstance(grant, Mapping)
    )


# -- lateral movement --------------------------------------------------------------------------

#: Receivers nobody published: the AG000..AG999 range, and names worth a guess.
_GUESSED = (
    *(f"AG{n:03d}" for n in (0, 6, 7, 10, 50, 99, 100, 145, 146, 200, 500, 998, 999)),
    *("MUN001", "PORTAL2", "CPLT", "ADMIN", "ROOT", "TEST", "GATEWAY"),
)
#: Services nobody should be granted; probed on published receivers.
_PROBED_SERVICES = ("registry.export", "admin.keys")
_PUBLISHED_PROBED = 8


async def _lateral_movement(lab: Lab, o: Observation) -> None:
    """The sender's valid key asks for services nobody granted it on published agencies,
    then for receivers nobody published: an unpublished receiver must be indistinguishable
    from one that does not exist."""
    o.agency = lab.sender
    conf = await _conf(lab)
    published = _published(conf)
    probes = [
        (receiver, service)
        for receiver in sorted(published)[:_PUBLISHED_PROBED]
        for service in _PROBED_SERVICES
        if not _allowed(conf, lab.sender, receiver, service)
    ]
    probes += [(code, "ping") for code in _GUESSED if code not in published]
    answered: dict[str, str] = {}
    for receiver, service in probes:
        token = lab.token(lab.sender, to=receiver, service=service).compact()
        status, code = await lab.send(o, token)
        if code != ProblemCode.UNKNOWN_RECEIVER:
            answered[receiver] = code or f"HTTP {status}"
    revealed = sorted(set(answered) - set(published))
    o.notes.append(
        f"{len(probes)} probes; answered other than unknown-receiver: "
        f"{', '.join(sorted(answered)) or 'none'} (all published: {not revealed})"
    )
    if revealed:
        o.blocked = False
        o.notes.append(
            "receivers /v1/conf does not publish answered as if they exist: "
            + ", ".join(f"{r} ({answered[r]})" for r in revealed)
        )


# -- raw HTTP: header floods and slow clients --------------------------------------------------


def _status(line: bytes) -> int | None:
    """The status of an HTTP/1.x status line, or None."""
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2.0)


async def _raw_request(lab: Lab, o: Observation, request: bytes, *, what: str) -> None:
    """Send ``request`` on a new connection; record the status, or that the server closed."""
    reader, writer = await asyncio.open_connection(*lab.address)
    try:
        with contextlib.suppress(ConnectionError):  # it may answer and hang up mid-send
            writer.write(request)
            await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), 10.0)
        except ConnectionError:
            line = b""
        except TimeoutError:
            o.notes.append(f"{what}: neither answered nor closed in 10 s")
            return
    finally:
        await _close(writer)
    status = _status(line)
    if status is None:
        o.closed += 1
        o.notes.append(f"{what}: connection closed without an answer")
    else:
        o.answer(status, None)
        o.notes.append(f"{what}: HTTP {status}")


def _head(lab: Lab, headers: list[bytes]) -> bytes:
    host = f"{lab.address[0]}:{lab.address[1]}".encode()
    lines = [b"GET /v1/health HTTP/1.1", b"Host: " + host, *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _header_flood(lab: Lab, o: Observation) -> None:
    count, size = int(o.params["headers"]), int(o.params["line_bytes"])
    many = [f"X-Flood-{i}: {i}".encode() for i in range(count)]
    await _raw_request(lab, o, _head(lab, many), what=f"{count} headers")
    long = [b"X-Flood: " + b"a" * size]
    await _raw_request(lab, o, _head(lab, long), what=f"a {size}-byte header line")


@dataclass(slots=True)
class _Trickle:
    """One slow connection: when the server closed it (seconds after it opened), if it did."""

    closed_after: float | None = None
    answered: int | None = None  # the status the server sent before closing (408)


async def _trickle(lab: Lab, interval: float, deadline: float) -> _Trickle:
    """Open a connection and send a request head a byte every ``interval``, never ending
    it, until the server closes the connection or the loop time ``deadline`` passes."""
    loop = asyncio.get_running_loop()
    opened = loop.time()
    outcome = _Trickle()
    try:
        reader, writer = await asyncio.open_connection(*lab.address)
    except OSError:
        outcome.closed_after = loop.time() - opened  # refused: no slot was held
        return outcome
    host = f"{lab.address[0]}:{lab.address[1]}".encode()
    head = b"POST /v1/messages HTTP/1.1\r\nHost: " + host + b"\r\n"
    drip: Iterator[int] = itertools.cycle(b"X-Slow: a\r\n")
    try:
        writer.write(head)
        while (left := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(4096), min(interval, left))
            except TimeoutError:
                writer.write(bytes([next(drip)]))
                continue
            except ConnectionError:
                data = b""
            if data and outcome.answered is None:
                outcome.answered = _status(data.split(b"\r\n", 1)[0])
            if not data:
                outcome.closed_after = loop.time() - opened
                break
    finally:
        await _close(writer)
    return outcome


async def _slowloris(lab: Lab, o: Observation) -> None:
    connections = int(o.params["connections"])
    interval, seconds = float(o.params["byte_interval"]), float(o.params["deadline"])
    deadline = asyncio.get_running_loop().time() + seconds
    trickles = await asyncio.gather(
        *(_trickle(lab, interval, deadline) for _ in range(connections))
    )
    closed = sorted(t.closed_after for t in trickles if t.closed_after is not None)
    o.closed += len(closed)
    o.blocked = len(closed) == connections
    answered = Counter(t.answered for t in trickles if t.answered is not None)
    when = f" (first after {closed[0]:.1f} s, last after {closed[-1]:.1f} s)" if closed else ""
    o.notes.append(
        f"{len(closed)} of {connections} slow connections closed by the server "
        f"within {seconds:g} s{when}; answers before closing: {dict(answered) or 'none'}"
    )


# -- floods and framing with the sender's name -------------------------------------------------


async def _request_flood(lab: Lab, o: Observation) -> None:
    """As many messages as the sender's valid key can push, ``concurrency`` at a time."""
    o.agency = lab.sender
    messages, concurrency = int(o.params["messages"]), int(o.params["concurrency"])
    gate = asyncio.Semaphore(concurrency)
    accepted = 0

    async def one() -> None:
        nonlocal accepted
        async with gate:
            token = lab.token(lab.sender, to=lab.other).compact()
            headers = {HEADER_SIGNATURE: token, "Content-Type": "application/json"}
            try:
                status, code, _ = await lab.post("/v1/messages", body=b"{}", headers=headers)
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                o.closed += 1  # the server hung up: a refusal, and the flood goes on
                return
        if 200 <= status < 300:
            accepted += 1  # the flood's head goes through: rate limits are not a wall
        else:
            o.answer(status, code)

    await asyncio.gather(*(one() for _ in range(messages)))
    refused = Counter(o.codes)
    o.notes.append(
        f"{accepted} of {messages} accepted; refused: {dict(refused) or 'none'}; "
        f"connections closed: {o.closed}"
    )


def _flipped(token: str) -> str:
    """``token`` with one bit of its signature flipped."""
    head, claims, signature = token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{claims}.{b64url_encode(bytes(raw))}"


def _framing_tokens(lab: Lab) -> Iterator[str]:
    """Tokens naming the sender as ``iss`` that its key never signed, in turn: unsigned,
    signed by another key under its kid, its signature with a bit flipped, under a kid
    nobody certified, and not a token at all."""
    while True:
        token = lab.token(lab.sender)
        token.header["alg"] = "none"
        yield token.compact(signature=b"")
        yield lab.token(lab.sender, key=lab.new_key()).compact()
        yield _flipped(lab.token(lab.sender).compact())
        yield lab.token(lab.sender, key=lab.new_key(), kid=lab.random_id(24)).compact()
        claims = b64url_encode(json.dumps({"iss": lab.sender}).encode())
        yield f"{b64url_encode(lab.randomness.token_bytes(24))}.{claims}.{b64url_encode(b'x')}"


async def _framing(lab: Lab, o: Observation) -> None:
    o.agency = lab.sender
    for token in itertools.islice(_framing_tokens(lab), int(o.params["messages"])):
        await lab.send(o, token)


# -- keys the gateway no longer trusts ---------------------------------------------------------


def _switched_off(verb: str) -> Run:
    """The sender's valid key while an operator holds the sender switched off."""

    async def run(lab: Lab, o: Observation) -> None:
        o.agency = lab.sender  # the runner brings it back to connected
        await lab.set_state(lab.sender, verb, f"attack lab: {verb} before using its key")
        await lab.send(o, lab.token(lab.sender, to=lab.other).compact())

    return run


async def _revoked_certificate(lab: Lab, o: Observation) -> None:
    identity, outcome = await lab.enrol(lab.sender)
    if identity is None:
        raise LabError(f"could not enrol a second key for {lab.sender}: {outcome}")
    status, answer = await lab.admin(
        "POST", f"certificates/{identity.kid}/revoke", {"reason": "attack lab: key stolen"}
    )
    if status != 200:
        raise LabError(f"revoke {identity.kid}: HTTP {status} {answer}")
    o.notes.append(f"enrolled and revoked {identity.kid}")
    token = lab.token(lab.sender, to=lab.other, key=identity.key, kid=identity.kid)
    await lab.send(o, token.compact())


async def _open_generation(lab: Lab, reason: str) -> int:
    status, answer = await lab.admin("POST", "generations", {"reason": reason})
    if status != 200:
        raise LabError(f"POST /v1/admin/generations: HTTP {status} {answer}")
    return int(answer["generation"])


async def _superseded_key(lab: Lab, o: Observation) -> None:
    generation = await _open_generation(lab, "attack lab: every key reported stolen")
    o.notes.append(f"opened key generation {generation}")
    await lab.send(o, lab.token(lab.sender, to=lab.other).compact())


def _superseded(conf: Mapping[str, Any], code: str, kid: str) -> bool:
    """Whether ``conf`` shows ``code``'s certificate ``kid`` as of an older generation."""
    current = conf.get("generation")
    for agency in conf.get("agencies", []):
        if isinstance(agency, Mapping) and agency.get("code") == code:
            for item in agency.get("certificates", []):
                if isinstance(item, Mapping) and item.get("kid") == kid:
                    return isinstance(current, int) and int(item["generation"]) < current
    return False


async def _stolen_key_reenrolment(lab: Lab, o: Observation) -> None:
    """A CSR for the sender with the key it held before the incident (the state dir's),
    after the operators opened a new generation: a certificate for it would launder the
    stolen key."""
    identity = lab.identities[lab.sender]
    if not _superseded(await _conf(lab), lab.sender, identity.kid):
        generation = await _open_generation(lab, "attack lab: incident response")
        o.notes.append(f"opened key generation {generation}")
    csr = build_csr(lab.sender, identity.key).decode("ascii")
    status, code, answer = await lab.post(
        "/v1/enrolments",
        body=json.dumps({"csr": csr}).encode(),
        headers={"Content-Type": "application/json"},
    )
    o.answer(status, code)
    if status == 202 and isinstance(answer, dict):
        o.notes.append(f"the gateway queued enrolment {answer.get('id')} for a distrusted key")


# -- forged receipts and answers ---------------------------------------------------------------


async def _forged_receipt(lab: Lab, o: Observation) -> None:
    """Skip the gateway: a valid message of the sender, delivered straight to the receiver
    with a receipt the gateway never signed (an attacker's key under the gateway's kid, the
    same under a kid of its own, the sender's key under the gateway's kid)."""
    gateway_kid = str(lab.conf["gateway"]["kid"])
    attacker = lab.new_key()
    for key, kid in (
        (attacker, gateway_kid),
        (attacker, lab.random_id(24)),
        (lab.identities[lab.sender].key, gateway_kid),
    ):
        body = b'{"NumSolicitud": "AS001T0000001"}'
        token = lab.token(lab.sender, body=body)
        claims = ReceiptClaims(
            iss=lab.gateway_code,
            jti=str(token.claims["jti"]),
            seq=1,
            lh=b64url_encode(lab.randomness.token_bytes(32)),
            bh=body_digest(body),
            iat=int(lab.now()),
        )
        receipt = sign_token(claims.as_dict(), key, kid=kid, typ=TYP_RECEIPT)
        await lab.deliver_directly(o, lab.receiver, token.compact(), receipt, body)


async def _move_endpoint(lab: Lab, code: str, endpoint: str, reason: str) -> None:
    status, answer = await lab.admin(
        "POST", f"agencies/{code}/endpoint", {"endpoint": endpoint, "reason": reason}
    )
    if status != 200:
        raise LabError(f"move {code}'s endpoint: HTTP {status} {answer}")


_FORGED_ANSWER = b'{"estado": "aprobado", "nota": "changed in transit by the attack lab"}'


@dataclass(slots=True)
class _Interception:
    """A man in the middle put in front of an agency: where it really is, the server."""

    code: str
    endpoint: str
    runner: web.AppRunner
    url: str = ""
    hits: int = 0


#: Interceptions still in place, by the observation of the run that set them up.
_INTERCEPTIONS: dict[int, _Interception] = {}


async def _intercept(lab: Lab, code: str) -> _Interception:
    """A local server that forwards to ``code``'s endpoint and changes the answer's body,
    keeping its signature header."""
    endpoint = str((await lab.agency(code))["endpoint"])

    async def forward(request: web.Request) -> web.Response:
        interception.hits += 1
        names = (HEADER_SIGNATURE, HEADER_RECEIPT, "Content-Type")
        headers = {n: request.headers[n] for n in names if n in request.headers}
        async with lab.session.post(endpoint, data=await request.read(), headers=headers) as r:
            await r.read()
            kept = {n: r.headers[n] for n in (HEADER_SIGNATURE, "Content-Type") if n in r.headers}
            return web.Response(status=r.status, body=_FORGED_ANSWER, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    interception = _Interception(code=code, endpoint=endpoint, runner=web.AppRunner(app))
    await interception.runner.setup()
    await web.TCPSite(interception.runner, "127.0.0.1", 0).start()
    port = interception.runner.addresses[0][1]
    interception.url = f"http://127.0.0.1:{port}/agencies/{code}/messages"
    return interception


async def _mitm_forged_response(lab: Lab, o: Observation) -> None:
    code = lab.third  # a bystander, so the portal's traffic is never touched
    interception = _INTERCEPTIONS[id(o)] = await _intercept(lab, code)
    try:
        await _move_endpoint(lab, code, interception.url, "attack lab: man in the middle")
        token = lab.token(lab.sender, to=code).compact()
        headers = {HEADER_SIGNATURE: token, "Content-Type": "application/json"}
        status, problem, _ = await lab.post("/v1/messages", body=b"{}", headers=headers)
    except BaseException:
        await _end_interception(lab, o)
        raise
    o.notes.append(f"the man in the middle forwarded {interception.hits} request(s)")
    if problem == ProblemCode.BAD_RESPONSE_SIGNATURE and status == 502:
        # 502 is the protocol's status for this refusal, not a crash; judge() counts any
        # 5xx status as one, so the refusal is recorded by its code and judged here.
        o.codes.append(problem)
        o.blocked = True
        o.notes.append("HTTP 502 bad-response-signature: the forged answer was refused")
    else:
        o.answer(status, problem)


async def _end_interception(lab: Lab, o: Observation) -> None:
    """Cleanup: the agency's endpoint back where it was, the man in the middle stopped."""
    interception = _INTERCEPTIONS.pop(id(o), None)
    if interception is None:
        return
    try:
        await _move_endpoint(lab, interception.code, interception.endpoint, "attack lab cleanup")
    finally:
        await interception.runner.cleanup()


# -- log tampering -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tampering:
    records: int
    seq: int
    change: str
    untouched: Verification
    tampered: Verification


def _backup(live: Path, copy: Path) -> None:
    """A consistent copy of the live database (SQLite's backup API, read-only source)."""
    source = sqlite3.connect(f"{live.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def _verify_copy(copy: Path) -> Verification:
    store = SqliteLogStore(copy)
    try:
        return verify(store.records())
    finally:
        store.close()


def _edit_record(copy: Path) -> tuple[int, str] | None:
    """Change one field of one record of the copy: the latest refusal becomes an
    acceptance (an insider erasing the trace of an attack), else the middle record's
    first text field. Returns the record's seq and what changed; None for an empty log."""
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        row = conn.execute(
            'SELECT seq, fields FROM log WHERE fields LIKE \'%"outcome":"rejected"%\''
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT seq, fields FROM log ORDER BY seq LIMIT 1 OFFSET"
                " (SELECT count(*) / 2 FROM log)"
            ).fetchone()
        if row is None:
            return None
        seq, text = int(row[0]), str(row[1])
        fields: dict[str, Any] = json.loads(text)
        if fields.get("outcome") == "rejected":
            name, value = "outcome", "accepted"
        else:
            name = next((k for k, v in sorted(fields.items()) if isinstance(v, str)), "note")
            value = f"{fields.get(name, '')} (edited)"
        change = f"{name}: {fields.get(name)!r} -> {value!r}"
        fields[name] = value
        conn.execute("UPDATE log SET fields = ? WHERE seq = ?", (canonical_json(fields), seq))
        return seq, change
    finally:
        conn.close()


async def _tamper(live: Path) -> _Tampering | None:
    """Copy the live log, verify the copy, edit one record, verify again."""

    def work() -> _Tampering | None:
        with tempfile.TemporaryDirectory(prefix="pasarela-lab-") as folder:
            copy = Path(folder) / "state.db"
            _backup(live, copy)
            untouched = _verify_copy(copy)
            edited = _edit_record(copy)
            if edited is None:
                return None
            seq, change = edited
            return _Tampering(
                records=untouched.records,
                seq=seq,
                change=change,
                untouched=untouched,
                tampered=_verify_copy(copy),
            )

    return await asyncio.to_thread(work)


async def _log_tampering(lab: Lab, o: Observation) -> None:
    """Edit one record in a copy of the live log; ``verify`` must name that record."""
    live = lab.state_dir / "state.db"
    if not live.is_file():
        raise LabError(f"{live} is missing: log tampering needs the gateway's state")
    outcome = await _tamper(live)
    if outcome is None:  # no record yet: a refusal makes one
        await lab.post("/v1/messages", body=b"{}")
        outcome = await _tamper(live)
    if outcome is None:
        raise LabError(f"{live} holds no log records to tamper with")
    t = outcome.tampered
    o.notes.append(
        f"copy of {outcome.records} records; record {outcome.seq} changed ({outcome.change}); "
        f"verify: {'ok' if t.ok else f'first bad seq {t.first_bad_seq}: {t.problem}'}"
    )
    if not outcome.untouched.ok:
        o.notes.append(f"the untouched copy does not verify either: {outcome.untouched.problem}")
    o.blocked = outcome.untouched.ok and not t.ok and t.first_bad_seq == outcome.seq


# -- the admin API -----------------------------------------------------------------------------


async def _admin_requests(lab: Lab, o: Observation, authorization: str | None) -> None:
    """``POST /v1/admin/disconnect-all`` (the incident lever) and ``GET /v1/admin/alerts``."""
    auth = {} if authorization is None else {"Authorization": authorization}
    body = json.dumps({"reason": "attack lab"}).encode()
    headers = {**auth, "Content-Type": "application/json"}
    status, code, _ = await lab.post("/v1/admin/disconnect-all", body=body, headers=headers)
    o.answer(status, code)
    if 200 <= status < 300:
        o.notes.append("disconnect-all was ACCEPTED: every agency was disconnected")
    status, code, _ = await lab.post("/v1/admin/alerts", headers=auth, method="GET")
    o.answer(status, code)


_Authorization = Callable[[Lab], str | None]


def _admin_attempt(*authorizations: _Authorization) -> Run:
    """The admin requests with each Authorization header (None: no header at all)."""

    async def run(lab: Lab, o: Observation) -> None:
        for authorization in authorizations:
            await _admin_requests(lab, o, authorization(lab))

    return run


def _bearer(
    signer: Callable[[Lab], Ed25519PrivateKey], *, name: Callable[[Lab], str], age: int = 0
) -> _Authorization:
    """An operator-style bearer token by ``signer``'s key, minted ``age`` seconds ago."""

    def authorization(lab: Lab) -> str:
        token = mint_operator_token(
            signer(lab), name=name(lab), gateway_code=lab.gateway_code, now=lab.now() - age, ttl=300
        )
        return f"Bearer {token}"

    return authorization


def _operator_key(lab: Lab) -> Ed25519PrivateKey:
    return lab.operator_key


def _attacker_key(lab: Lab) -> Ed25519PrivateKey:
    return lab.new_key()


def _sender_key(lab: Lab) -> Ed25519PrivateKey:
    return lab.identities[lab.sender].key


def _operator(lab: Lab) -> str:
    return OPERATOR_NAME


def _sender(lab: Lab) -> str:
    return lab.sender


async def _reconnect_everyone(lab: Lab, o: Observation) -> None:
    """Cleanup: if disconnect-all went through, bring every agency back."""
    if not o.accepted:
        return
    conf = await _conf(lab)
    for agency in conf.get("agencies", []):
        await lab.ensure_connected(str(agency["code"]))


PLATFORM_TECHNIQUES: tuple[Technique, ...] = (
    Technique(
        id="lateral-movement",
        title="Lateral movement: probing for agencies and services",
        description="The sender's valid key asks published agencies for services nobody "
        "granted, then ~20 receivers nobody published (AG000..AG999 and guesses). Refused as "
        "not-authorized or unknown-receiver (agency-disconnected once the detector "
        "quarantines the sender: the probes are signed by its own key); no unpublished "
        "receiver may answer as if it existed.",
        references=Reference(
            owasp="API5:2023 Broken Function Level Authorization",
            attack="T1046 Network Service Discovery",
        ),
        expected=_refused("unknown-receiver", "not-authorized", "agency-disconnected"),
        run=_lateral_movement,
    ),
    Technique(
        id="header-flood",
        title="Header flood: 200 headers; one 64 KiB header line",
        description="Raw requests whose head is too big to parse cheaply: answered 400/431 "
        "or closed by the HTTP layer, never a 5xx.",
        references=Reference(owasp=_API4, attack="T1499.003 Application Exhaustion Flood"),
        expected=Expected(alert=False),
        run=_header_flood,
        params={"headers": 200, "line_bytes": 65_536},
    ),
    Technique(
        id="slowloris",
        title="Slowloris: request heads trickled a byte at a time",
        description="Many connections, each sending a request head a byte per interval and "
        "never finishing it: the server must close every one before the deadline.",
        references=Reference(owasp=_API4, attack="T1499.002 Service Exhaustion Flood"),
        expected=Expected(alert=True, alert_kinds=frozenset({"slow-headers"})),
        run=_slowloris,
        params={"connections": 50, "byte_interval": 1.0, "deadline": 15.0},
    ),
    Technique(
        id="request-flood",
        title="Request flood with the sender's valid key",
        description="Messages as fast as the sender can sign them, 50 at a time: rate "
        "limited, alerted, and the sender quarantined past the flood threshold.",
        references=Reference(owasp=_API4, attack="T1499.002 Service Exhaustion Flood"),
        expected=Expected(
            codes=frozenset({"rate-limited", "agency-disconnected"}),
            alert_kinds=frozenset({"rate-limited"}),
            quarantine=True,
        ),
        run=_request_flood,
        params={"messages": 600, "concurrency": 50},
    ),
    Technique(
        id="framing",
        title="Framing: garbage signed in the sender's name",
        description="Sixty tokens naming the sender as iss that its key never signed "
        "(unsigned, another key under its kid, a flipped bit, an unknown kid, not a token): "
        "refused and alerted, never counted against the sender, which stays connected.",
        references=Reference(rfc8725="3.1, 3.3", owasp=_API2, attack=_FORGE),
        expected=_refused(
            "bad-signature", "malformed", "algorithm-not-allowed", "unknown-key", connected=True
        ),
        run=_framing,
        params={"messages": 60},
    ),
    Technique(
        id="quarantined-agency-key",
        title="A quarantined agency's key",
        description="The operators quarantined the sender; its valid key keeps sending.",
        references=Reference(owasp=_API2, attack=_VALID),
        expected=_refused("agency-disconnected"),
        run=_switched_off("quarantine"),
    ),
    Technique(
        id="disconnected-agency-key",
        title="A disconnected agency's key",
        description="The operators disconnected the sender; its valid key keeps sending.",
        references=Reference(owasp=_API2, attack=_VALID),
        expected=_refused("agency-disconnected"),
        run=_switched_off("disconnect"),
    ),
    Technique(
        id="revoked-certificate",
        title="A revoked certificate's key",
        description="A second key is enrolled for the sender, its certificate revoked (the "
        "key was stolen), and the thief signs with it.",
        references=Reference(owasp=_API2, attack=_FORGE),
        expected=_refused("revoked-key"),
        run=_revoked_certificate,
    ),
    Technique(
        id="forged-receipt",
        title="Forged gateway receipt, delivered around the gateway",
        description="A valid message of the sender posted straight to the receiver's "
        "endpoint with a Pasarela-Receipt the gateway never signed: the agency host refuses.",
        references=Reference(rfc8725="3.3", owasp=_API2, attack=_FORGE),
        expected=Expected(alert=False),
        run=_forged_receipt,
    ),
    Technique(
        id="mitm-forged-response",
        title="Man in the middle changes the receiver's answer",
        description="A bystander's endpoint moved to a proxy that forwards the message and "
        "swaps the answer's body, keeping its signature: the gateway refuses the answer.",
        references=Reference(
            rfc8725="3.3",
            owasp="API10:2023 Unsafe Consumption of APIs",
            attack="T1557 Adversary-in-the-Middle",
        ),
        expected=_refused("bad-response-signature"),
        run=_mitm_forged_response,
        cleanup=_end_interception,
    ),
    Technique(
        id="log-tampering",
        title="Log tampering: one field of one record changed",
        description="A consistent copy of the live state.db with the latest refusal turned "
        "into an acceptance: the chain verifier must name that record.",
        references=Reference(attack="T1565.001 Data Manipulation: Stored Data Manipulation"),
        expected=Expected(alert=False),
        run=_log_tampering,
    ),
    Technique(
        id="admin-no-token",
        title="Admin API without a token",
        description="disconnect-all and the alert feed with no Authorization header.",
        references=Reference(
            owasp="API5:2023 Broken Function Level Authorization",
            attack="T1190 Exploit Public-Facing Application",
        ),
        expected=_refused("unauthenticated"),
        run=_admin_attempt(lambda lab: None),
        cleanup=_reconnect_everyone,
    ),
    Technique(
        id="admin-expired-token",
        title="Admin API with an expired operator token",
        description="An operator token signed by the real operator key an hour ago.",
        references=Reference(
            owasp=_API2,
            attack="T1550.001 Use Alternate Authentication Material: Application Access Token",
        ),
        expected=_refused("unauthenticated"),
        run=_admin_attempt(_bearer(_operator_key, name=_operator, age=3600)),
        cleanup=_reconnect_everyone,
    ),
    Technique(
        id="admin-forged-token",
        title="Admin API with a forged operator token",
        description="An operator token with kid 'operator' signed by the attacker's key.",
        references=Reference(rfc8725="3.3", owasp=_API2, attack=_FORGE),
        expected=_refused("unauthenticated"),
        run=_admin_attempt(_bearer(_attacker_key, name=_operator)),
        cleanup=_reconnect_everyone,
    ),
    Technique(
        id="admin-agency-key",
        title="Admin API with an operator-style token signed by an agency's key",
        description="Cross-JWT confusion: the sender's key signs an operator token, under "
        "kid 'operator' and under its own code.",
        references=Reference(rfc8725="2.8, 3.12", owasp=_API2, attack=_FORGE),
        expected=_refused("unauthenticated"),
        run=_admin_attempt(
            _bearer(_sender_key, name=_operator), _bearer(_sender_key, name=_sender)
        ),
        cleanup=_reconnect_everyone,
    ),
    Technique(
        id="superseded-key",
        title="A key of a superseded generation",
        description="The operators open a new key generation (every key is distrusted); "
        "the sender's old key keeps signing.",
        references=Reference(owasp=_API2, attack=_FORGE),
        expected=_refused("superseded-key"),
        run=_superseded_key,
        destructive=True,
    ),
    Technique(
        id="stolen-key-reenrolment",
        title="Re-enrolling a stolen key",
        description="After a new generation, a CSR for the sender with its pre-incident key: "
        "the gateway refuses to certify a distrusted key again.",
        references=Reference(owasp=_API2, attack="T1098 Account Manipulation"),
        expected=_refused("superseded-key"),
        run=_stolen_key_reenrolment,
        destructive=True,
    ),
)
