"""``POST /trigger/send``: the request (:func:`parse_trigger`, a :class:`SendRequest` or
:class:`BadTrigger`) and the answers (:class:`TriggerResult`, as
``docs/openapi/connector.yaml`` describes them), with :func:`send_for_trigger` mapping a
:class:`~agents.connector.Connector` send onto them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agents.conf import ConfUnavailable
from agents.connector import Connector
from agents.verification import Refused, Unreachable, VerificationFailed, encode_json
from gateway.protocol import AGENCY_CODE, SERVICE_CODE


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    """What a trigger asks to send: ``body`` is the requested JSON value, serialized
    compactly (the bytes that are signed and sent)."""

    to: str
    service: str
    body: bytes


class BadTrigger(ValueError):
    """The trigger's request was not ``{"to", "service", "body"}`` with an agency code
    and a service code; the message says what is wrong."""


def parse_trigger(raw: bytes) -> SendRequest:
    """The :class:`SendRequest` of a ``POST /trigger/send`` body; :class:`BadTrigger`
    when it is not one."""
    try:
        asked = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        asked = None
    if not isinstance(asked, dict) or not {"to", "service", "body"} <= asked.keys():
        raise BadTrigger('expected a JSON object {"to", "service", "body"}')
    to, service = asked["to"], asked["service"]
    if not isinstance(to, str) or not AGENCY_CODE.fullmatch(to):
        raise BadTrigger('"to" must be an agency code')
    if not isinstance(service, str) or not SERVICE_CODE.fullmatch(service):
        raise BadTrigger('"service" must be a service code')
    return SendRequest(to=to, service=service, body=encode_json(asked["body"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerResult:
    """The answer to ``POST /trigger/send``: an HTTP status and a JSON document, made by
    one of the constructors below as ``docs/openapi/connector.yaml`` describes them.

    ``jti`` is the ``jti`` of the message sent, for the log (the 503 document has none).
    """

    status: int
    document: Mapping[str, Any]
    jti: str | None = None

    @classmethod
    def verified(cls, *, status: int, body: bytes, jti: str, answer_jti: str) -> TriggerResult:
        """200: the receiver's answer (its ``status`` and ``body``), signature and receipt
        verified; ``answer_jti`` is the answer's own ``jti``."""
        document = {
            "status": status,
            "body": _decoded(body),
            "receipt_verified": True,
            "jti": jti,
            "answer_jti": answer_jti,
        }
        return cls(status=200, document=document, jti=jti)

    @classmethod
    def refused(cls, refusal: Refused, *, jti: str) -> TriggerResult:
        """200 ``"from": "gateway"``: the gateway refused the message (its unsigned problem
        document as ``body``)."""
        document = {
            "status": refusal.status,
            "body": dict(refusal.problem) if refusal.problem else refusal.detail,
            "receipt_verified": False,
            "from": "gateway",
            "jti": jti,
        }
        return cls(status=200, document=document, jti=jti)

    @classmethod
    def verification_failed(cls, reason: object, *, jti: str) -> TriggerResult:
        """502: the answer or its receipt did not verify; the connector refused it."""
        document = {"error": "verification failed", "reason": str(reason), "jti": jti}
        return cls(status=502, document=document, jti=jti)

    @classmethod
    def unreachable(cls, reason: object, *, jti: str | None = None) -> TriggerResult:
        """503: no answer from the gateway after the retries, or its configuration
        document could not be fetched and verified."""
        document = {"error": "gateway unreachable", "reason": str(reason)}
        return cls(status=503, document=document, jti=jti)

    @classmethod
    def bad_request(cls, error: object) -> TriggerResult:
        """400: the trigger's request was not one (see :class:`BadTrigger`)."""
        return cls(status=400, document={"error": str(error)})

    @property
    def outcome(self) -> str:
        """``receiver`` or ``gateway`` (200), ``bad-trigger`` (400), else the error."""
        if self.status == 200:
            return str(self.document.get("from", "receiver"))
        if self.status == 400:
            return "bad-trigger"
        return str(self.document.get("error"))

    def log_fields(self) -> dict[str, Any]:
        """What :meth:`ExchangeLog.send` writes of this result."""
        if self.status == 400:
            return {"status": self.status, "outcome": self.outcome, "error": self.document["error"]}
        return {
            "jti": self.jti,
            "status": self.status,
            "outcome": self.outcome,
            "answer_status": self.document.get("status") if self.status == 200 else None,
            "reason": self.document.get("reason"),
        }

    def response(self) -> web.Response:
        """The answer as aiohttp sends it (``application/json``)."""
        return web.json_response(dict(self.document), status=self.status)


async def send_for_trigger(connector: Connector, request: SendRequest) -> TriggerResult:
    """Send ``request`` with ``connector`` (a fresh ``jti``) and say how it ended."""
    jti = connector.new_jti()
    try:
        reply = await connector.send(
            to=request.to, service=request.service, body=request.body, jti=jti
        )
    except Refused as exc:  # an unsigned problem document: the gateway's refusal
        return TriggerResult.refused(exc, jti=jti)
    except VerificationFailed as exc:
        return TriggerResult.verification_failed(exc, jti=jti)
    except (Unreachable, ConfUnavailable) as exc:
        return TriggerResult.unreachable(exc, jti=jti)
    return TriggerResult.verified(
        status=reply.status, body=reply.body, jti=reply.jti, answer_jti=reply.claims.jti
    )


def _decoded(body: bytes) -> Any:
    """A body as JSON when it is JSON, else as text."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body.decode("utf-8", errors="replace")
