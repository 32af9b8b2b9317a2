"""The exchange log of a connector process: :class:`ExchangeLog`, one JSON line on stderr
per exchange (``delivery``, ``send``), with the ``Pasarela-Test-Case`` request header
(:data:`TEST_CASE_HEADER`) as ``case``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

from agents._process.trigger import SendRequest, TriggerResult, _decoded
from gateway import protocol
from gateway.clock import Clock, SystemClock
from gateway.protocol import HEADER_SIGNATURE
from gateway.transport import WireResponse

#: Sent by a conformance kit on every request; logged so logs match its test cases.
TEST_CASE_HEADER: Final = "Pasarela-Test-Case"
_PROBLEM_PREFIX: Final = "urn:pasarela:problem:"


class ExchangeLog:
    """One JSON line per event on ``stream`` (default: the current ``sys.stderr``).

    Each line has ``at`` (seconds, from ``clock``), ``event``, the ``common`` fields given
    here, and the event's own. :meth:`delivery` and :meth:`send` write one line per
    exchange, with the ``Pasarela-Test-Case`` request header as ``case``; :meth:`event`
    is also what :class:`~agents.conf.ConfCache` takes as its ``log``.
    """

    def __init__(
        self, *, stream: TextIO | None = None, clock: Clock | None = None, **common: Any
    ) -> None:
        self._stream = stream
        self._clock = clock or SystemClock()
        self._common = common

    def event(self, event: str, /, **fields: Any) -> None:
        """Write one line: ``at``, ``event``, the common fields, then ``fields``."""
        record = {"at": round(self._clock.now(), 3), "event": event, **self._common, **fields}
        stream = self._stream or sys.stderr
        stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        stream.flush()

    def delivery(
        self, headers: Mapping[str, str], body: bytes, answer: WireResponse, **fields: Any
    ) -> None:
        """A delivery and its answer: the token's claims as claimed (not verified), the
        body's size, the answer's status and problem code."""
        claims = _unverified_claims(headers.get(HEADER_SIGNATURE))
        problem = None
        if answer.status >= 400:
            document = _decoded(answer.body)
            if isinstance(document, dict):
                problem = str(document.get("type", "")).removeprefix(_PROBLEM_PREFIX)
        self.event(
            "delivery",
            case=headers.get(TEST_CASE_HEADER),
            iss=claims.get("iss"),
            jti=claims.get("jti"),
            svc=claims.get("svc"),
            bytes=len(body),
            status=answer.status,
            problem=problem,
            **fields,
        )

    def send(
        self,
        headers: Mapping[str, str],
        *,
        request: SendRequest | None = None,
        result: TriggerResult | None = None,
        **fields: Any,
    ) -> None:
        """A trigger: what it asked to send and how it ended (``fields`` add or override,
        such as ``outcome="crash"``)."""
        asked = {"to": request.to, "service": request.service} if request else {}
        ended = result.log_fields() if result else {}
        self.event("send", case=headers.get(TEST_CASE_HEADER), **{**asked, **ended, **fields})


def _unverified_claims(token: str | None) -> dict[str, Any]:
    """A compact JWS's claims as claimed, without any check ({} when unreadable)."""
    try:
        claims = json.loads(protocol.b64url_decode((token or "").split(".")[1]))
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}
