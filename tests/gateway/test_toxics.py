"""Toxics on in-process links: delays in virtual time, faults per stream, toxicity draws."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from gateway.toxics import Stream, Toxic, ToxicKind, ToxicTransport
from gateway.transport import MemoryTransport, TransportError, WireRequest, WireResponse
from scenarios.virtual import LoopClock, run_virtual

T = TypeVar("T")
URL = "http://agency.test:8000/inbox"
LINK = "client->agency"


class Echo:
    """A server that counts the requests it processed and answers with ``reply``."""

    def __init__(self, reply: bytes = b"ok") -> None:
        self.calls = 0
        self.reply = reply

    async def __call__(self, request: WireRequest) -> WireResponse:
        self.calls += 1
        return WireResponse(status=200, body=self.reply)


def _link(request: WireRequest) -> str | None:
    return LINK if request.url.startswith("http://agency.test") else None


def _proxy(server: Echo, *, seed: int = 1) -> ToxicTransport:
    inner = MemoryTransport({URL: server})
    return ToxicTransport(inner, link_of=_link, rng=random.Random(seed))


def _request(body: bytes = b"") -> WireRequest:
    return WireRequest(url=URL, body=body)


def _virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def run(_clock: LoopClock) -> T:
        return await main()

    return run_virtual(run, epoch=0.0)


def _timed(proxy: ToxicTransport, request: WireRequest, timeout: float = 30.0) -> float:
    """Virtual seconds one successful exchange takes."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await proxy.send(request, timeout=timeout)
        return loop.time() - start

    return _virtual(main)


def _failure(proxy: ToxicTransport, timeout: float = 30.0) -> tuple[float, str]:
    """Virtual seconds until one exchange fails, and the failure's message."""

    async def main() -> tuple[float, str]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TransportError) as caught:
            await proxy.send(_request(), timeout=timeout)
        return loop.time() - start, str(caught.value)

    return _virtual(main)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [(Stream.UPSTREAM, 5.0), (Stream.DOWNSTREAM, 5.0), (Stream.BOTH, 10.0)],
)
def test_latency_delays_each_stream_it_covers(stream: Stream, expected: float) -> None:
    """Latency adds latency_ms on each stream the toxic covers, exactly in virtual time."""
    proxy = _proxy(Echo())
    proxy.add(LINK, "lag", Toxic(kind=ToxicKind.LATENCY, stream=stream, latency_ms=5000))
    assert _timed(proxy, _request()) == pytest.approx(expected)
    assert proxy.affected["lag"] == 1


def test_jitter_stays_within_bounds_and_repeats_for_a_seed() -> None:
    """Jittered latency stays in latency +/- jitter, varies, and is the same for a seed."""

    def delays(seed: int) -> list[float]:
        proxy = _proxy(Echo(), seed=seed)
        lag = Toxic(kind=ToxicKind.LATENCY, stream=Stream.UPSTREAM, latency_ms=100, jitter_ms=40)
        proxy.add(LINK, "lag", lag)
        return [_timed(proxy, _request()) for _ in range(50)]

    first = delays(7)
    assert all(0.06 - 1e-9 <= d <= 0.14 + 1e-9 for d in first)
    assert len(set(first)) > 1
    assert first == delays(7)
    assert first != delays(8)


def test_jitter_larger_than_latency_never_gives_a_negative_delay() -> None:
    """Latency minus jitter is floored at zero."""
    proxy = _proxy(Echo())
    proxy.add(LINK, "lag", Toxic(kind=ToxicKind.LATENCY, latency_ms=1, jitter_ms=50))
    assert all(_timed(proxy, _request()) >= 0 for _ in range(20))


def test_bandwidth_delay_is_proportional_to_the_request_body() -> None:
    """Upstream bandwidth delays by len(request body) / rate."""
    proxy = _proxy(Echo())
    toxic = Toxic(kind=ToxicKind.BANDWIDTH, stream=Stream.UPSTREAM, rate_kbps=10)
    proxy.add(LINK, "thin", toxic)
    assert _timed(proxy, _request(b"x" * 10_000)) == pytest.approx(1.0)
    assert _timed(proxy, _request(b"x" * 30_000)) == pytest.approx(3.0)


def test_downstream_bandwidth_uses_the_response_body() -> None:
    """Downstream bandwidth is measured on the response, whatever the request's size."""
    proxy = _proxy(Echo(reply=b"y" * 5_000))
    toxic = Toxic(kind=ToxicKind.BANDWIDTH, stream=Stream.DOWNSTREAM, rate_kbps=1)
    proxy.add(LINK, "thin", toxic)
    assert _timed(proxy, _request(b"x" * 100_000)) == pytest.approx(5.0)


def test_slicer_delays_by_slices_times_delay_and_keeps_the_body_intact() -> None:
    """Without variation, 1000 bytes in 100-byte slices arrive 10 delays late, unchanged."""
    body = bytes(range(250)) * 4
    proxy = _proxy(Echo(reply=body))
    slicer = Toxic(kind=ToxicKind.SLICER, stream=Stream.DOWNSTREAM, average_size=100, delay_us=2000)
    proxy.add(LINK, "slices", slicer)

    async def main() -> tuple[float, bytes]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        response = await proxy.send(_request())
        return loop.time() - start, response.body

    elapsed, received = _virtual(main)
    assert elapsed == pytest.approx(10 * 0.002)
    assert received == body


def test_slicer_with_variation_stays_between_the_slice_count_bounds() -> None:
    """Slices of 100 +/- 50 bytes cut 1000 bytes into 7 to 20 slices."""
    proxy = _proxy(Echo())
    slicer = Toxic(
        kind=ToxicKind.SLICER,
        stream=Stream.UPSTREAM,
        average_size=100,
        size_variation=50,
        delay_us=1000,
    )
    proxy.add(LINK, "slices", slicer)
    counts = {round(_timed(proxy, _request(b"z" * 1000)) / 0.001) for _ in range(30)}
    assert min(counts) >= 7
    assert max(counts) <= 20
    assert len(counts) > 1


def test_upstream_down_refuses_without_reaching_the_server() -> None:
    """Down on the request stream refuses at once; the handler never runs."""
    server = Echo()
    proxy = _proxy(server)
    proxy.add(LINK, "cut", Toxic(kind=ToxicKind.DOWN, stream=Stream.UPSTREAM))
    elapsed, message = _failure(proxy)
    assert elapsed == 0
    assert "connection refused" in message
    assert server.calls == 0


def test_downstream_down_loses_the_response_of_a_processed_request() -> None:
    """Down on the response stream: the server processed the request, the caller fails."""
    server = Echo()
    proxy = _proxy(server)
    proxy.add(LINK, "cut", Toxic(kind=ToxicKind.DOWN, stream=Stream.DOWNSTREAM))
    _elapsed, message = _failure(proxy)
    assert "connection reset" in message
    assert server.calls == 1


def test_upstream_reset_after_its_delay_never_reaches_the_server() -> None:
    """Reset on the request stream fails after timeout_ms, before the handler runs."""
    server = Echo()
    proxy = _proxy(server)
    proxy.add(LINK, "rst", Toxic(kind=ToxicKind.RESET, stream=Stream.UPSTREAM, timeout_ms=250))
    elapsed, message = _failure(proxy)
    assert elapsed == pytest.approx(0.25)
    assert "connection reset by peer" in message
    assert server.calls == 0


def test_downstream_reset_runs_the_handler_but_the_caller_gets_an_error() -> None:
    """Reset on the response stream: processed by the server, lost on the way back."""
    server = Echo()
    proxy = _proxy(server)
    proxy.add(LINK, "rst", Toxic(kind=ToxicKind.RESET, stream=Stream.DOWNSTREAM, timeout_ms=0))
    elapsed, message = _failure(proxy)
    assert elapsed == 0
    assert "connection reset by peer" in message
    assert server.calls == 1


def test_upstream_timeout_closes_after_timeout_ms_without_delivery() -> None:
    """Timeout on the request stream holds the data, then closes: timed out, not delivered."""
    server = Echo()
    proxy = _proxy(server)
    toxic = Toxic(kind=ToxicKind.TIMEOUT, stream=Stream.UPSTREAM, timeout_ms=2000)
    proxy.add(LINK, "hold", toxic)
    elapsed, message = _failure(proxy)
    assert elapsed == pytest.approx(2.0)
    assert "timed out" in message
    assert server.calls == 0


def test_downstream_timeout_zero_holds_the_response_until_the_callers_timeout() -> None:
    """Timeout 0 on the response stream holds it forever: the caller's own timeout fires."""
    server = Echo()
    proxy = _proxy(server)
    proxy.add(LINK, "hold", Toxic(kind=ToxicKind.TIMEOUT, stream=Stream.DOWNSTREAM))
    elapsed, message = _failure(proxy, timeout=7.0)
    assert elapsed == pytest.approx(7.0)
    assert "timed out" in message
    assert server.calls == 1


def test_callers_timeout_bounds_the_whole_exchange() -> None:
    """Latency longer than the caller's timeout fails at the timeout, before delivery."""
    server = Echo()
    proxy = _proxy(server)
    proxy.add(LINK, "lag", Toxic(kind=ToxicKind.LATENCY, stream=Stream.UPSTREAM, latency_ms=60_000))
    elapsed, message = _failure(proxy, timeout=3.0)
    assert elapsed == pytest.approx(3.0)
    assert "timed out" in message
    assert server.calls == 0


def test_toxics_apply_in_insertion_order() -> None:
    """A latency added before a down toxic delays the refusal; added after, it never runs."""
    proxy = _proxy(Echo())
    proxy.add(LINK, "lag", Toxic(kind=ToxicKind.LATENCY, stream=Stream.UPSTREAM, latency_ms=500))
    proxy.add(LINK, "cut", Toxic(kind=ToxicKind.DOWN, stream=Stream.UPSTREAM))
    proxy.add(LINK, "late", Toxic(kind=ToxicKind.LATENCY, stream=Stream.UPSTREAM, latency_ms=9))
    assert list(proxy.toxics(LINK)) == ["lag", "cut", "late"]
    elapsed, _message = _failure(proxy)
    assert elapsed == pytest.approx(0.5)
    assert proxy.affected == {"lag": 1, "cut": 1}


def test_half_toxicity_affects_about_half_and_repeats_for_a_seed() -> None:
    """Toxicity 0.5 over 1000 exchanges stays within binomial bounds; a seed fixes the count."""

    def affected(seed: int) -> int:
        server = Echo()
        proxy = _proxy(server, seed=seed)
        proxy.add(LINK, "flaky", Toxic(kind=ToxicKind.DOWN, stream=Stream.UPSTREAM, toxicity=0.5))

        async def main() -> None:
            for _ in range(1000):
                with contextlib.suppress(TransportError):
                    await proxy.send(_request())

        _virtual(main)
        assert server.calls == 1000 - proxy.affected["flaky"]
        return proxy.affected["flaky"]

    count = affected(42)
    assert 500 - 5 * 16 <= count <= 500 + 5 * 16  # mean 500, sd ~15.8: five sigmas
    assert affected(42) == count


def test_zero_toxicity_never_affects_and_draws_nothing() -> None:
    """Toxicity 0 never hits, and neither 0 nor 1 consumes random numbers."""
    rng = random.Random(3)
    state = rng.getstate()
    server = Echo()
    proxy = ToxicTransport(MemoryTransport({URL: server}), link_of=_link, rng=rng)
    proxy.add(LINK, "never", Toxic(kind=ToxicKind.DOWN, toxicity=0.0))
    proxy.add(LINK, "always", Toxic(kind=ToxicKind.LATENCY, latency_ms=1))

    async def main() -> None:
        for _ in range(100):
            await proxy.send(_request())

    _virtual(main)
    assert server.calls == 100
    assert proxy.affected == {"always": 100}
    assert rng.getstate() == state


def test_a_toxic_on_both_streams_counts_an_exchange_once() -> None:
    """affected counts exchanges, not streams, even when both streams are hit."""
    proxy = _proxy(Echo())
    proxy.add(LINK, "lag", Toxic(kind=ToxicKind.LATENCY, latency_ms=1))
    for _ in range(3):
        _timed(proxy, _request())
    assert proxy.affected["lag"] == 3


def test_remove_restores_a_clean_link() -> None:
    """After its only toxic is removed the link is clean and nothing is active."""
    server = Echo()
    proxy = _proxy(server)
    proxy.add(LINK, "cut", Toxic(kind=ToxicKind.DOWN))
    assert proxy.active
    _failure(proxy)
    proxy.remove(LINK, "cut")
    assert not proxy.active
    assert proxy.toxics(LINK) == {}
    assert _timed(proxy, _request()) == 0
    assert server.calls == 1


def test_other_links_pass_through_untouched() -> None:
    """A request whose link has no toxic, or that has no link, is not affected."""
    server = Echo()
    inner = MemoryTransport({URL: server})
    proxy = ToxicTransport(inner, link_of=lambda _r: "elsewhere", rng=random.Random(0))
    proxy.add(LINK, "cut", Toxic(kind=ToxicKind.DOWN))
    assert _timed(proxy, _request()) == 0
    none_proxy = ToxicTransport(inner, link_of=lambda _r: None, rng=random.Random(0))
    none_proxy.add(LINK, "cut", Toxic(kind=ToxicKind.DOWN))
    assert _timed(none_proxy, _request()) == 0
    assert server.calls == 2
    assert not proxy.affected
    assert not none_proxy.affected


async def test_fast_path_never_calls_link_of_when_nothing_is_active() -> None:
    """With no toxic anywhere, send goes straight to inner without asking for the link."""

    def explode(_request: WireRequest) -> str | None:
        raise AssertionError("link_of called on the fast path")

    server = Echo()
    proxy = ToxicTransport(MemoryTransport({URL: server}), link_of=explode, rng=random.Random(0))
    response = await proxy.send(_request())
    assert response.body == b"ok"
    assert server.calls == 1


def test_add_rejects_a_taken_name_and_remove_an_absent_one() -> None:
    """Names are unique per link; removing an unknown toxic raises KeyError."""
    proxy = _proxy(Echo())
    proxy.add(LINK, "lag", Toxic(kind=ToxicKind.LATENCY))
    proxy.add("other", "lag", Toxic(kind=ToxicKind.LATENCY))
    with pytest.raises(ValueError, match="already has a toxic named 'lag'"):
        proxy.add(LINK, "lag", Toxic(kind=ToxicKind.DOWN))
    with pytest.raises(KeyError):
        proxy.remove(LINK, "nope")
    with pytest.raises(KeyError):
        proxy.remove("unknown-link", "lag")


def test_toxics_view_is_read_only() -> None:
    """toxics(link) cannot be used to change the link."""
    proxy = _proxy(Echo())
    proxy.add(LINK, "lag", Toxic(kind=ToxicKind.LATENCY))
    view = proxy.toxics(LINK)
    with pytest.raises(TypeError):
        view["x"] = Toxic(kind=ToxicKind.DOWN)  # type: ignore[index]


async def test_aclose_closes_the_inner_transport() -> None:
    """Closing the proxy closes what it wraps."""
    closed: list[bool] = []

    class Inner(MemoryTransport):
        async def aclose(self) -> None:
            closed.append(True)

    await ToxicTransport(Inner(), link_of=_link, rng=random.Random(0)).aclose()
    assert closed == [True]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": ToxicKind.DOWN, "toxicity": 1.5}, "toxicity"),
        ({"kind": ToxicKind.DOWN, "toxicity": -0.1}, "toxicity"),
        ({"kind": ToxicKind.LATENCY, "latency_ms": -1}, "latency_ms"),
        ({"kind": ToxicKind.LATENCY, "jitter_ms": float("nan")}, "jitter_ms"),
        ({"kind": ToxicKind.TIMEOUT, "timeout_ms": float("inf")}, "timeout_ms"),
        ({"kind": ToxicKind.BANDWIDTH}, "rate_kbps > 0"),
        ({"kind": ToxicKind.SLICER, "delay_us": 5}, "average_size > 0"),
        ({"kind": ToxicKind.SLICER, "average_size": 10, "size_variation": 10}, "size_variation"),
        ({"kind": ToxicKind.SLICER, "average_size": 10, "size_variation": -1}, "size_variation"),
    ],
)
def test_toxic_rejects_invalid_fields(fields: dict[str, Any], message: str) -> None:
    """Invalid toxics fail at construction with a message naming the field."""
    with pytest.raises(ValueError, match=message):
        Toxic(**fields)
