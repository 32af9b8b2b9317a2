"""The aiohttp adapter: parse, call the core, render. No verification logic lives here.

Routes::

    POST /v1/messages        relay a signed message (Gateway.relay)
    GET  /v1/conf            the signed configuration document
    GET  /v1/health          store, keys and configuration checks
    GET  /metrics            Prometheus exposition
    POST /v1/enrolments      an agency submits a CSR
    GET  /v1/enrolments/{id} status of an enrolment (and the certificate once approved)
    /v1/admin/...            operator actions (Bearer operator JWT)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.admin import Admin, conf_document
from gateway.log import LogEntry, StoreUnavailable
from gateway.operators import OperatorAuthError, verify_operator_token
from gateway.pipeline import Decision, Verdict
from gateway.protocol import HEADER_SIGNATURE, PROBLEM_CONTENT_TYPE, ProblemCode, problem_document
from gateway.registry import ConnectionState, IllegalTransition, RegistryError, StateEvent
from gateway.service import Gateway
from gateway.transport import WireRequest, WireResponse
from gateway.trust import DistrustedKeyError, TrustError

__all__ = ["ADMIN_KEY", "GATEWAY_KEY", "create_app"]

GATEWAY_KEY = web.AppKey("gateway", Gateway)
ADMIN_KEY = web.AppKey("admin", Admin)
OPERATORS_KEY = web.AppKey("operators", Mapping[str, Ed25519PublicKey])

_log = structlog.get_logger("pasarela.http")

#: Seconds ``GET /v1/health`` waits for the log's store before calling it failing.
HEALTH_STORE_TIMEOUT = 3.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problem(
    code: ProblemCode, detail: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=code.status,
        body=json.dumps(problem_document(code, detail)).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _render(response: WireResponse) -> web.Response:
    headers = dict(response.headers)
    headers.setdefault("Content-Type", "application/json")
    return web.Response(status=response.status, body=response.body, headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render aiohttp's own HTTP errors (404, 405, 413, ...) as problem+json."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {
            404: ProblemCode.NOT_FOUND,
            405: ProblemCode.METHOD_NOT_ALLOWED,
            413: ProblemCode.PAYLOAD_TOO_LARGE,
        }.get(exc.status, ProblemCode.INVALID_REQUEST)
        allow = exc.headers.get("Allow")  # a 405 must name the methods that are (RFC 9110)
        return _problem(
            code, exc.reason or code.caption, headers={"Allow": allow} if allow else None
        )
    except StoreUnavailable as exc:
        # An operator action or enrolment that cannot be logged is not done: try again.
        _log.warning("store_unavailable", path=request.path[:200], detail=str(exc))
        return _problem(
            ProblemCode.STORE_UNAVAILABLE,
            "the message log cannot be written now; try again",
            headers={"Retry-After": "1"},
        )
    except Exception:
        # A defect, never an input problem: say so plainly, keep the trace in the event log.
        _log.exception("internal_error", path=request.path[:200], method=request.method)
        body = {"type": "about:blank", "title": "Internal Server Error", "status": 500}
        return web.Response(
            status=500, body=json.dumps(body).encode(), content_type=PROBLEM_CONTENT_TYPE
        )


async def _read_body(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes: enough for the pipeline to see the size problem."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(min(65_536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _wire_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in request.headers:
        # Repeated headers are joined, so a doubled signature can never pass as one.
        headers[name] = ",".join(request.headers.getall(name))
    return headers


async def post_message(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        # bh covers the bytes on the wire; a decoded body would be other bytes.
        refusal = Decision(
            verdict=Verdict.REJECT,
            reason=ProblemCode.MALFORMED,
            detail=f"Content-Encoding {encoding[:40]!r} not accepted; send the body as is",
        )
        response = _render(await gateway.refuse(refusal, source=request.remote or ""))
        # The body was not read (it cannot be, as is): the connection cannot be reused.
        response.force_close()
        return response
    body = await _read_body(request, gateway.config.limits.max_body)
    wire = WireRequest(
        url=request.path, headers=_wire_headers(request), body=body, peer=request.remote or ""
    )
    return _render(await gateway.relay(wire))


async def get_conf(request: web.Request) -> web.Response:
    body, signature = conf_document(request.app[GATEWAY_KEY])
    return web.Response(
        body=body, content_type="application/json", headers={HEADER_SIGNATURE: signature}
    )


async def get_health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    checks: dict[str, dict[str, Any]] = {}
    try:
        # Also how buffered records reach a store that came back while nothing was sent.
        await asyncio.wait_for(gateway.log.sync(), timeout=HEALTH_STORE_TIMEOUT)
        checks["store"] = {"ok": True, "log_seq": gateway.log.head[0]}
    except Exception as exc:  # the health check reports; it never fails itself
        checks["store"] = {
            "ok": False,
            "error": str(exc) or "no answer in time",
            "log_seq": gateway.log.head[0],
            "durable_seq": gateway.log.durable_seq,
        }
    if gateway.cache is not None:
        try:
            await asyncio.wait_for(gateway.cache.ping(), timeout=HEALTH_STORE_TIMEOUT)
            checks["cache"] = {"ok": True, "replica": gateway.cache.owner}
        except Exception as exc:  # the health check reports; it never fails itself
            checks["cache"] = {"ok": False, "error": str(exc) or "no answer in time"}
    key = gateway.key_record
    key_ok = (
        not key.revoked
        and key.generation == gateway.trust.generation
        and key.valid_at(gateway.clock.now())
    )
    checks["keys"] = {"ok": key_ok, "generation": gateway.trust.generation, "kid": key.kid}
    agencies = gateway.registry.agencies()
    checks["configuration"] = {
        "ok": bool(agencies),
        "agencies": len(agencies),
        "connected": sum(1 for a in agencies if a.state.value == "connected"),
    }
    ok = all(check["ok"] for check in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "failing", "checks": checks}, status=200 if ok else 503
    )


async def get_metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    states = Counter(agency.state.value for agency in gateway.registry.agencies())
    body = gateway.metrics.render({state.value: states[state.value] for state in ConnectionState})
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await _read_body(request, 65_536)
    if len(raw) > 65_536:
        raise _InvalidRequestError(ProblemCode.PAYLOAD_TOO_LARGE, "request body over 64 KiB")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _InvalidRequestError(ProblemCode.INVALID_REQUEST, f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise _InvalidRequestError(ProblemCode.INVALID_REQUEST, "body nested too deeply") from exc
    if not isinstance(value, dict):
        raise _InvalidRequestError(ProblemCode.INVALID_REQUEST, "body must be a JSON object")
    return value


class _InvalidRequestError(Exception):
    def __init__(self, code: ProblemCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _reason(body: Mapping[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise _InvalidRequestError(
            ProblemCode.INVALID_REQUEST, "reason must be a string of at most 500 chars"
        )
    return reason or "no reason given"


async def post_enrolment(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    try:
        body = await _json_object(request)
        csr = body.get("csr")
        if not isinstance(csr, str):
            raise _InvalidRequestError(ProblemCode.INVALID_REQUEST, 'body must be {"csr": <PEM>}')
        enrolment = await request.app[ADMIN_KEY].submit_enrolment(csr)
    except DistrustedKeyError as exc:
        return await _refuse_request(
            gateway, request, exc.problem, str(exc), kind="enrolment-rejection", agency=exc.agency
        )
    except (TrustError, RegistryError) as exc:
        return await _refuse_request(
            gateway, request, ProblemCode.INVALID_REQUEST, str(exc), kind="enrolment-rejection"
        )
    except _InvalidRequestError as exc:
        return await _refuse_request(
            gateway, request, exc.code, exc.detail, kind="enrolment-rejection"
        )
    return web.json_response(
        {"id": enrolment.id, "agency": enrolment.agency, "status": enrolment.status}, status=202
    )


async def get_enrolment(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    wanted = request.match_info["id"]
    for enrolment in gateway.trust.enrolments():
        if enrolment.id == wanted:
            out: dict[str, Any] = {
                "id": enrolment.id,
                "agency": enrolment.agency,
                "status": enrolment.status,
            }
            if enrolment.kid is not None:
                record = gateway.trust.lookup(enrolment.kid)
                out["kid"] = enrolment.kid
                out["certificate"] = record.certificate_pem if record else None
            return web.json_response(out)
    return _problem(ProblemCode.NOT_FOUND, f"no enrolment {wanted}")


AdminAction = Callable[[web.Request, Admin, str, dict[str, Any]], Awaitable[dict[str, Any]]]


def admin_route(action: AdminAction) -> Handler:
    """Authenticate the operator, run ``action``, log refusals; render problems as 4xx."""

    async def handler(request: web.Request) -> web.StreamResponse:
        admin = request.app[ADMIN_KEY]
        gateway = admin.gateway
        try:
            operator = verify_operator_token(
                request.headers.get("Authorization"),
                operators=request.app[OPERATORS_KEY],
                gateway_code=gateway.config.code,
                now=gateway.clock.now(),
            )
            body = await _json_object(request) if request.method == "POST" else {}
            result = await action(request, admin, operator, body)
        except OperatorAuthError as exc:
            return await _refuse_request(gateway, request, ProblemCode.UNAUTHENTICATED, str(exc))
        except _InvalidRequestError as exc:
            return await _refuse_request(gateway, request, exc.code, exc.detail)
        except IllegalTransition as exc:
            return await _refuse_request(gateway, request, ProblemCode.INVALID_REQUEST, str(exc))
        except RegistryError as exc:
            return await _refuse_request(gateway, request, ProblemCode.NOT_FOUND, str(exc))
        except TrustError as exc:
            return await _refuse_request(gateway, request, ProblemCode.NOT_FOUND, str(exc))
        return web.json_response(result)

    return handler


async def _refuse_request(
    gateway: Gateway,
    request: web.Request,
    code: ProblemCode,
    detail: str,
    *,
    kind: str = "admin-rejection",
    agency: str = "",
) -> web.Response:
    """Log a refused admin or enrolment request durably, then answer problem+json.

    Requests without a valid operator token and CSRs for distrusted keys are also alerts
    (naming ``agency``, never counting against it: anybody can send those).
    """
    record = gateway.log.append(
        LogEntry(
            kind=kind,
            at=gateway.clock.now(),
            fields={"path": request.path[:200], "reason": code.value, "detail": detail[:500]},
        )
    )
    gateway.metrics.messages.labels("rejected", code.value).inc()
    _log.info("admin_refused", seq=record.seq, path=request.path, reason=code.value, detail=detail)
    if code in (ProblemCode.UNAUTHENTICATED, ProblemCode.SUPERSEDED_KEY, ProblemCode.REVOKED_KEY):
        await gateway.alert(
            kind=code.value,
            agency=agency,
            attributed=False,
            detail=f"{request.method} {request.path[:200]}: {detail}",
            source=request.remote or "",
            refusal=record.seq,
        )
    await gateway.log.sync(record.seq)
    return _problem(code, detail)


def _code(request: web.Request) -> str:
    return request.match_info["code"]


async def _disconnect_all(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    result = await admin.disconnect_all(actor=operator, reason=_reason(body))
    return {"action": result.action, "seq": result.seq, **result.detail}


def _agency_event(event: StateEvent) -> AdminAction:
    async def action(
        request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        result = await admin.transition(_code(request), event, actor=operator, reason=_reason(body))
        return {"action": result.action, "seq": result.seq, **result.detail}

    return action


async def _transition(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    try:
        event = StateEvent(str(body.get("event")))
    except ValueError as exc:
        events = ", ".join(e.value for e in StateEvent)
        raise _InvalidRequestError(
            ProblemCode.INVALID_REQUEST, f"event must be one of: {events}"
        ) from exc
    return await _agency_event(event)(request, admin, operator, body)


async def _revoke(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    result = await admin.revoke(request.match_info["kid"], actor=operator, reason=_reason(body))
    return {"action": result.action, "seq": result.seq, **result.detail}


async def _open_generation(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    result, _ = await admin.open_generation(actor=operator, reason=_reason(body))
    return {"action": result.action, "seq": result.seq, **result.detail}


async def _list_enrolments(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "enrolments": [
            {"id": e.id, "agency": e.agency, "status": e.status, "submitted_at": e.submitted_at}
            for e in admin.gateway.trust.enrolments()
        ]
    }


async def _agency(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    agency = admin.gateway.registry.require(_code(request))
    return {
        "code": agency.code,
        "name": agency.name,
        "kind": agency.kind.value,
        "state": agency.state.value,
        "endpoint": agency.endpoint,
        "services": sorted(agency.services),
    }


async def _move_endpoint(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str):
        raise _InvalidRequestError(ProblemCode.INVALID_REQUEST, 'body must hold "endpoint": URL')
    try:
        result = await admin.move_endpoint(
            _code(request), endpoint, actor=operator, reason=_reason(body)
        )
    except ValueError as exc:
        raise _InvalidRequestError(ProblemCode.INVALID_REQUEST, str(exc)) from exc
    return {"action": result.action, "seq": result.seq, **result.detail}


async def _alerts(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    """The alert feed: ``?after=ID`` for the ones after an id, ``?limit=N`` (at most 1000)."""
    try:
        after = int(request.query.get("after", "0"))
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError as exc:
        raise _InvalidRequestError(
            ProblemCode.INVALID_REQUEST, "after and limit are integers"
        ) from exc
    detector = admin.gateway.detector
    alerts = detector.recent(after=after, limit=limit)
    return {"alerts": [a.as_dict() for a in alerts], "last": detector.last_id}


async def _approve(
    request: web.Request, admin: Admin, operator: str, body: dict[str, Any]
) -> dict[str, Any]:
    result, record = await admin.approve_enrolment(
        request.match_info["id"], actor=operator, reason=_reason(body)
    )
    return {
        "action": result.action,
        "seq": result.seq,
        **result.detail,
        "certificate": record.certificate_pem,
    }


def create_app(
    gateway: Gateway, *, operators: Mapping[str, Ed25519PublicKey] | None = None
) -> web.Application:
    """The gateway's aiohttp application. Closing it syncs and closes the log."""
    app = web.Application(middlewares=[problem_middleware], client_max_size=64 * 1024 * 1024)
    app[GATEWAY_KEY] = gateway
    app[ADMIN_KEY] = Admin(gateway)
    app[OPERATORS_KEY] = dict(operators or {})

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await gateway.log.aclose()
        await gateway.transport.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/messages", post_message)
    app.router.add_get("/v1/conf", get_conf)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/v1/enrolments", post_enrolment)
    app.router.add_get("/v1/enrolments/{id}", get_enrolment)
    admin = "/v1/admin"
    app.router.add_post(f"{admin}/disconnect-all", admin_route(_disconnect_all))
    for verb, event in (
        ("connect", StateEvent.CONNECT),
        ("disconnect", StateEvent.DISCONNECT),
        ("quarantine", StateEvent.QUARANTINE),
        ("release", StateEvent.RELEASE),
    ):
        app.router.add_post(f"{admin}/agencies/{{code}}/{verb}", admin_route(_agency_event(event)))
    app.router.add_post(f"{admin}/agencies/{{code}}/transitions", admin_route(_transition))
    app.router.add_post(f"{admin}/certificates/{{kid}}/revoke", admin_route(_revoke))
    app.router.add_post(f"{admin}/generations", admin_route(_open_generation))
    app.router.add_get(f"{admin}/enrolments", admin_route(_list_enrolments))
    app.router.add_get(f"{admin}/alerts", admin_route(_alerts))
    app.router.add_get(f"{admin}/agencies/{{code}}", admin_route(_agency))
    app.router.add_post(f"{admin}/agencies/{{code}}/endpoint", admin_route(_move_endpoint))
    app.router.add_post(f"{admin}/enrolments/{{id}}/approve", admin_route(_approve))
    return app
