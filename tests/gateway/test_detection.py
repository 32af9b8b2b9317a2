"""Detection: alerts for every attack-like refusal, and quarantine only on the agency's own key."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin import Admin
from gateway.detection import DetectionPolicy, Detector
from gateway.pipeline import Limits
from gateway.protocol import HEADER_SIGNATURE
from gateway.registry import ConnectionState, StateEvent
from gateway.testing import GatewayWorld, make_gateway, sign_message
from gateway.transport import WireRequest


def _alerts(world: GatewayWorld) -> list[tuple[str, str, bool]]:
    return [(a.kind, a.agency, a.attributed) for a in world.gateway.detector.recent(limit=1000)]


def _state(world: GatewayWorld, code: str) -> ConnectionState:
    return world.registry.require(code).state


async def test_forged_signature_naming_an_agency_raises_an_unattributed_alert() -> None:
    """Garbage signed by AG002's key but naming AG001 as sender: an alert that names the
    key's owner; a token that does not verify names AG001 but never counts against it."""
    world = make_gateway()
    forged = sign_message(world.parties["AG002"], to="PORTAL", jti="f1", now=world.clock.now())
    header, claims, _ = forged.split(".")
    tampered = f"{header}.{claims}.{'A' * 86}"
    response = await world.send("AG001", to="PORTAL", jti="x", signature=tampered)
    assert response.status == 401
    assert _alerts(world) == [("bad-signature", "AG002", False)]


async def test_framing_an_agency_never_gets_it_quarantined() -> None:
    """A hundred badly signed messages naming AG001 raise a hundred alerts; AG001 stays
    connected, because none of them was signed by its current key."""
    world = make_gateway(detection=DetectionPolicy(quarantine_after=5))
    good = sign_message(world.parties["AG001"], to="PORTAL", jti="g", now=world.clock.now())
    header, claims, signature = good.split(".")
    bad = f"{header}.{claims}.{signature[:-4]}AAAA"
    for i in range(100):
        await world.send("AG001", to="PORTAL", jti=f"f{i}", signature=bad)
    alerts = _alerts(world)
    assert len(alerts) == 100
    assert all(agency == "AG001" and not attributed for _, agency, attributed in alerts)
    assert _state(world, "AG001") is ConnectionState.CONNECTED


async def test_an_agency_probing_for_receivers_is_quarantined_by_the_detector() -> None:
    """AG001, with its own current key, asks for receivers that do not exist: past the
    threshold it is quarantined (logged as the detector's action) and refused from then on."""
    world = make_gateway(detection=DetectionPolicy(quarantine_after=5))
    for i in range(5):
        response = await world.send("AG001", to=f"AG9{i:02d}", jti=f"p{i}")
        assert response.status == 404
    assert _state(world, "AG001") is ConnectionState.QUARANTINED
    kinds = [kind for kind, _, _ in _alerts(world)]
    assert kinds == ["unknown-receiver"] * 5 + ["auto-quarantine"]
    await world.gateway.log.sync()
    admin = [r for r in world.store.rows if r.kind == "admin"]
    assert [(r.fields["actor"], r.fields["action"], r.fields["agency"]) for r in admin] == [
        ("detector", "auto-quarantine", "AG001")
    ]
    after = await world.send("AG001", to="PORTAL", jti="later")
    assert after.status == 403  # agency-disconnected
    assert _state(world, "AG002") is ConnectionState.CONNECTED


async def test_flood_from_one_agency_is_rate_limited_then_quarantined() -> None:
    world = make_gateway(
        limits=Limits(rate_per_second=1, burst=3),
        detection=DetectionPolicy(flood_after=10, quarantine_after=0),
    )
    statuses = [(await world.send("AG001", to="PORTAL", jti=f"m{i}")).status for i in range(20)]
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3:13] == [429] * 10
    assert _state(world, "AG001") is ConnectionState.QUARANTINED
    assert ("auto-quarantine", "AG001", True) in _alerts(world)


async def test_a_replay_by_someone_else_is_an_alert_that_counts_against_nobody() -> None:
    """Anyone who saw AG001's message can send it again with another body: refused as a
    replay, alerted, not counted against AG001."""
    world = make_gateway(detection=DetectionPolicy(quarantine_after=1))
    token = sign_message(world.parties["AG001"], to="PORTAL", jti="r", now=world.clock.now())
    first = WireRequest(url="http://gw/v1/messages", headers={HEADER_SIGNATURE: token}, body=b"{}")
    assert (await world.gateway.relay(first)).status == 200
    again = WireRequest(
        url="http://gw/v1/messages", headers={HEADER_SIGNATURE: token}, body=b'{"x": 1}'
    )
    assert (await world.gateway.relay(again)).status in (400, 409)
    assert _alerts(world)[0][0] in ("body-digest-mismatch", "replay")
    assert _alerts(world)[0][2] is False
    assert _state(world, "AG001") is ConnectionState.CONNECTED


async def test_released_agency_is_counted_afresh() -> None:
    world = make_gateway(detection=DetectionPolicy(quarantine_after=3))
    for i in range(2):
        await world.send("AG001", to="AG999", jti=f"a{i}")
    # quarantined by hand and released: the two earlier anomalies are forgotten
    admin = Admin(world.gateway)
    await admin.transition("AG001", StateEvent.QUARANTINE, actor="ops", reason="check")
    await admin.transition("AG001", StateEvent.RELEASE, actor="ops", reason="checked")
    await world.send("AG001", to="AG999", jti="a3")
    assert _state(world, "AG001") is ConnectionState.CONNECTED


async def test_detection_off_raises_alerts_but_never_quarantines() -> None:
    world = make_gateway(detection=DetectionPolicy.off())
    for i in range(50):
        await world.send("AG001", to="AG999", jti=f"n{i}")
    assert len(_alerts(world)) == 50
    assert _state(world, "AG001") is ConnectionState.CONNECTED


async def test_alert_feed_metrics_and_admin_alerts() -> None:
    """GET /v1/admin/alerts (operators only) pages through alerts; /metrics counts them by
    kind; asking for the feed without a token is itself an alert."""
    world = make_gateway()
    await world.send("AG001", to="AG999", jti="u1")
    await world.send("AG001", to="AG999", jti="u2")
    auth = {"Authorization": f"Bearer {world.operator_token()}"}
    async with TestClient(TestServer(world.app())) as client:
        page = await (await client.get("/v1/admin/alerts", headers=auth)).json()
        assert [a["kind"] for a in page["alerts"]] == ["unknown-receiver"] * 2
        assert page["last"] == 2
        first = page["alerts"][0]
        assert (first["agency"], first["attributed"]) == ("AG001", True)
        assert isinstance(first["seq"], int)
        later = await (await client.get("/v1/admin/alerts?after=1", headers=auth)).json()
        assert [a["id"] for a in later["alerts"]] == [2]
        anonymous = await client.get("/v1/admin/alerts")
        assert anonymous.status == 401
        bad = await client.get("/v1/admin/alerts?after=x", headers=auth)
        assert bad.status == 400
        metrics = await (await client.get("/metrics")).text()
    assert 'pasarela_security_alerts_total{kind="unknown-receiver"} 2.0' in metrics
    assert 'pasarela_security_alerts_total{kind="unauthenticated"} 1.0' in metrics


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        DetectionPolicy(window_seconds=0)
    with pytest.raises(ValueError, match="0: off"):
        DetectionPolicy(quarantine_after=-1)


def test_detector_window_forgets_old_anomalies() -> None:
    """Anomalies older than the window do not add up to a quarantine."""
    detector = Detector(DetectionPolicy(window_seconds=10, quarantine_after=3))

    def attributed(at: float) -> bool:
        alert = detector.new_alert(
            at=at, kind="not-authorized", agency="AG001", attributed=True, detail=""
        )
        return detector.crossed(alert)

    assert [attributed(t) for t in (0, 5, 16, 17)] == [False, False, False, False]
    assert attributed(18)  # 16, 17, 18 are within ten seconds; 0 and 5 fell out
