"""The gateway's routes for the in-memory transport (tests and virtual time).

The aiohttp app (:mod:`gateway.http`) serves these same three routes over real HTTP;
here they are a plain handler that a :class:`~gateway.transport.MemoryTransport` mounts,
so parties in virtual time reach the gateway exactly as connectors reach it live.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from gateway.admin import Admin, conf_document
from gateway.protocol import HEADER_SIGNATURE, ProblemCode
from gateway.registry import RegistryError
from gateway.service import problem_response
from gateway.transport import Handler, WireRequest, WireResponse
from gateway.trust import DistrustedKeyError, TrustError

__all__ = ["gateway_handler"]


def gateway_handler(admin: Admin) -> Handler:
    """``POST /v1/messages``, ``GET /v1/conf`` and ``POST /v1/enrolments`` in process."""
    gateway = admin.gateway

    async def handle(request: WireRequest) -> WireResponse:
        path = urlsplit(request.url).path
        if request.method == "POST" and path == "/v1/messages":
            return await gateway.relay(request)
        if request.method == "GET" and path == "/v1/conf":
            body, signature = conf_document(gateway)
            headers = {"Content-Type": "application/json", HEADER_SIGNATURE: signature}
            return WireResponse(status=200, headers=headers, body=body)
        if request.method == "POST" and path == "/v1/enrolments":
            try:
                csr = json.loads(request.body).get("csr")
                if not isinstance(csr, str):
                    raise TypeError("csr")
                enrolment = await admin.submit_enrolment(csr)
            except DistrustedKeyError as exc:
                return problem_response(exc.problem, f"enrolment refused: {exc}")
            except (ValueError, TypeError, AttributeError, TrustError, RegistryError) as exc:
                return problem_response(ProblemCode.INVALID_REQUEST, f"enrolment refused: {exc}")
            body = json.dumps(
                {"id": enrolment.id, "agency": enrolment.agency, "status": enrolment.status}
            ).encode()
            return WireResponse(status=202, headers={"Content-Type": "application/json"}, body=body)
        return problem_response(ProblemCode.NOT_FOUND, f"no route {request.method} {path}")

    return handle
