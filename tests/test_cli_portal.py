"""``pasarela portal``: the portal's outbox from the command line.

``enqueue`` and ``status`` run in this process (they configure no logging); ``dispatch``
always runs as a process of its own, as do the gateway and the agency host of the
end-to-end test: the operator disconnects an agency with the admin API, its requests are
held, it is connected again, and they are delivered.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agents.outbox import Outbox
from gateway.clock import SeededRandomness, SystemClock
from gateway.state import init_state
from pasarela.cli import main
from pasarela.processes import child_process, free_port, free_ports, pasarela_argv, wait_healthy


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    init_state(root, agencies=2, randomness=SeededRandomness(7), now=time.time())
    return root


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["portal", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _enqueue(
    capsys: pytest.CaptureFixture[str], state: Path, outbox: Path, *args: str
) -> tuple[int, str, str]:
    return _run(capsys, "enqueue", "--state", str(state), "--outbox", str(outbox), *args)


def _status(capsys: pytest.CaptureFixture[str], outbox: Path) -> dict[str, Any]:
    code, out, err = _run(capsys, "status", "--outbox", str(outbox), "--json")
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def _portal(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``pasarela portal ARGS`` in a process of its own (dispatch configures logging)."""
    argv = pasarela_argv("portal", *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _counts(pending: int = 0, held: int = 0, delivered: int = 0, failed: int = 0) -> dict[str, int]:
    return {"pending": pending, "held": held, "delivered": delivered, "failed": failed}


# -- enqueue and status on a temporary outbox ------------------------------------------------


def test_enqueue_prints_the_id_and_jti_and_status_counts_per_agency(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = tmp_path / "outbox.db"
    jtis = []
    for n, to in enumerate(("AG001", "AG001", "AG002")):
        code, out, err = _enqueue(capsys, state, outbox, "--to", to, "--body", json.dumps({"n": n}))
        assert code == 0, err
        assert out.startswith(f"enqueued: request {n + 1} to {to}, service ati.request, jti ")
        jtis.append(out.split()[-1])
    assert all(jti.startswith("PORTAL-") for jti in jtis)
    assert len(set(jtis)) == 3

    document = _status(capsys, outbox)
    assert document["outbox"] == str(outbox.resolve())
    assert document["agencies"] == {"AG001": _counts(pending=2), "AG002": _counts(pending=1)}
    assert document["totals"] == _counts(pending=3)
    assert document["held"] == document["failed"] == []

    code, out, _ = _run(capsys, "status", "--outbox", str(outbox))
    assert code == 0
    rows = {line.split()[1]: line.split()[3:-1:2] for line in out.splitlines() if "│ AG" in line}
    assert rows == {"AG001": ["2", "0", "0", "0", "2"], "AG002": ["1", "0", "0", "0", "1"]}


def test_the_same_request_under_the_same_jti_is_enqueued_once(
    state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outbox, body_file = tmp_path / "outbox.db", tmp_path / "body.json"
    body_file.write_text('{ "NumSolicitud": "AG001-0000042",\n  "Texto": "¿cuántos?" }\n')
    request = ("--to", "AG001", "--jti", "PORTAL-AG001-0000042")
    code, out, err = _enqueue(capsys, state, outbox, *request, "--body-file", str(body_file))
    assert code == 0, err
    assert out == "enqueued: request 1 to AG001, service ati.request, jti PORTAL-AG001-0000042\n"
    # The same document, however it is spaced, from --body or standard input: request 1.
    compact = '{"NumSolicitud":"AG001-0000042","Texto":"¿cuántos?"}'
    code, out, err = _enqueue(capsys, state, outbox, *request, "--body", compact)
    assert code == 0, err
    assert out.startswith("already enqueued (pending): request 1 to AG001")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(body_file.read_bytes())))
    code, out, err = _enqueue(capsys, state, outbox, *request, "--body-file", "-")
    assert code == 0, err
    assert out.startswith("already enqueued (pending): request 1 to AG001")
    assert _status(capsys, outbox)["totals"] == _counts(pending=1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("--to", "AG002", "--body", "{}"), "not to AG002"),
        (("--to", "AG001", "--service", "ping", "--body", "{}"), "not service ping"),
        (("--to", "AG001", "--body", '{"n": 2}'), 'another body: {"n":1}'),
    ],
)
def test_another_request_under_a_known_jti_is_a_usage_error(
    state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, ...],
    reason: str,
) -> None:
    outbox, jti = tmp_path / "outbox.db", ("--jti", "PORTAL-1")
    assert _enqueue(capsys, state, outbox, "--to", "AG001", "--body", '{"n": 1}', *jti)[0] == 0
    code, out, err = _enqueue(capsys, state, outbox, *change, *jti)
    assert code == 2
    assert out == ""
    assert "--jti: PORTAL-1 is already request 1 (to AG001, service ati.request, " in err
    assert reason in err
    assert _status(capsys, outbox)["totals"] == _counts(pending=1)


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (("--to", "AG001", "--body", "{not json"), "--body is not JSON"),
        (("--to", "AG001", "--body-file", "{missing}"), "--body-file: cannot read"),
        (("--to", "AG001", "--body-file", "{bad}"), "--body-file is not JSON"),
        (("--to", "ag001", "--body", "{}"), "--to: 'ag001' is not an agency code"),
        (("--to", "AG 1", "--body", "{}"), "--to: 'AG 1' is not an agency code"),
        (("--to", "AG001", "--service", "ATI", "--body", "{}"), "--service: 'ATI' is not a"),
        (("--to", "AG001", "--jti", "a b", "--body", "{}"), "--jti: 'a b' is not a message id"),
    ],
)
def test_bad_input_to_enqueue_is_exit_2_naming_the_option(
    state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    shown: str,
) -> None:
    (tmp_path / "bad.json").write_text('{"n": ')
    paths = {"{missing}": str(tmp_path / "missing.json"), "{bad}": str(tmp_path / "bad.json")}
    outbox = tmp_path / "outbox.db"
    code, out, err = _enqueue(capsys, state, outbox, *(paths.get(a, a) for a in args))
    assert code == 2
    assert out == ""
    assert shown in err
    assert not outbox.exists()  # nothing created on bad input


def test_enqueue_needs_a_state_and_an_outbox_it_can_use(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = ("--to", "AG001", "--body", "{}")
    code, _, err = _enqueue(capsys, tmp_path / "nowhere", tmp_path / "o.db", *request)
    assert code == 2
    assert "--state:" in err
    assert "is not a directory" in err
    code, _, err = _enqueue(capsys, tmp_path, tmp_path / "o.db", *request)
    assert code == 2
    assert "--state:" in err
    assert "is not a pasarela state directory" in err
    code, _, err = _enqueue(capsys, state, tmp_path / "no" / "o.db", *request)
    assert code == 2
    assert "--outbox:" in err
    assert "does not exist" in err
    # Another SQLite file (the gateway's state) is never turned into an outbox.
    before = (state / "state.db").read_bytes()
    code, _, err = _enqueue(capsys, state, state / "state.db", *request)
    assert code == 2
    assert "--outbox:" in err
    assert "not an outbox" in err
    assert (state / "state.db").read_bytes() == before
    (tmp_path / "notes.txt").write_text("not a database, not even close " * 100)
    code, _, err = _enqueue(capsys, state, tmp_path / "notes.txt", *request)
    assert code == 2
    assert "--outbox:" in err
    assert "not an outbox" in err
    code, _, err = _enqueue(capsys, state, tmp_path, *request)
    assert code == 2
    assert "is a directory" in err
    with pytest.raises(SystemExit) as exited:  # argparse: --body and --body-file together
        main(["portal", "enqueue", "--state", str(state), "--outbox", "o.db", "--to", "AG001",
              "--body", "{}", "--body-file", "b.json"])  # fmt: skip
    assert exited.value.code == 2


def test_status_lists_the_held_and_failed_requests_with_their_problem(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox_path = tmp_path / "outbox.db"
    with Outbox(outbox_path, clock=SystemClock(), new_jti=lambda: "unused") as outbox:
        for n in range(4):
            outbox.enqueue(to="AG001", service="ati.request", body={"n": n}, jti=f"PORTAL-{n}")
        outbox.hold(1, "AG001 is disconnected in the configuration document")
        outbox.hold(2, "held behind PORTAL-0")
        outbox.begin(3)
        outbox.fail(3, "404 unknown-receiver: no agency AG001")
    document = _status(capsys, outbox_path)
    assert document["agencies"] == {"AG001": _counts(pending=1, held=2, failed=1)}
    assert [(i["id"], i["state"], i["problem"]) for i in document["held"]] == [
        (1, "held", "AG001 is disconnected in the configuration document"),
        (2, "held", "held behind PORTAL-0"),
    ]
    [failed] = document["failed"]
    assert failed["jti"] == "PORTAL-2"
    assert failed["attempts"] == 1
    assert failed["problem"] == "404 unknown-receiver: no agency AG001"
    assert failed["enqueued_at"].endswith("Z")

    code, out, _ = _run(capsys, "status", "--outbox", str(outbox_path))
    assert code == 0
    assert "Held and failed requests" in out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
    assert [row for row in cells if row[1:2] in (["held"], ["failed"])] == [
        ["AG001", "held", "1", "AG001 is disconnected in the configuration"],
        ["AG001", "held", "2", "held behind PORTAL-0"],
        ["AG001", "failed", "3", "404 unknown-receiver: no agency AG001"],
    ]


def test_status_of_an_empty_a_missing_or_a_foreign_outbox(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Outbox(tmp_path / "empty.db", clock=SystemClock(), new_jti=lambda: "unused").close()
    code, out, _ = _run(capsys, "status", "--outbox", str(tmp_path / "empty.db"))
    assert code == 0
    assert "the outbox is empty" in out
    code, _, err = _run(capsys, "status", "--outbox", str(tmp_path / "missing.db"))
    assert code == 2
    assert "--outbox:" in err
    assert "does not exist" in err
    assert not (tmp_path / "missing.db").exists()
    code, _, err = _run(capsys, "status", "--outbox", str(state / "state.db"))
    assert code == 2
    assert "not an outbox" in err


# -- dispatch without a gateway ----------------------------------------------------------------


def test_bad_input_to_dispatch_is_exit_2_naming_the_option(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = tmp_path / "outbox.db"
    assert _enqueue(capsys, state, outbox, "--to", "AG001", "--body", "{}")[0] == 0
    cases = [
        (tmp_path / "nowhere", outbox, "http://127.0.0.1:1", "--state:"),
        (state, tmp_path / "missing.db", "http://127.0.0.1:1", "--outbox:"),
        (state, outbox, "ftp://127.0.0.1:1", "--gateway-url:"),
    ]
    for state_dir, outbox_file, url, shown in cases:
        code, _, err = _run(capsys, "dispatch", "--state", str(state_dir), "--once",
                            "--outbox", str(outbox_file), "--gateway-url", url)  # fmt: skip
        assert code == 2
        assert shown in err, err
    (state / "agencies" / "PORTAL" / "key.pem").unlink()
    code, _, err = _run(capsys, "dispatch", "--state", str(state), "--outbox", str(outbox),
                        "--once")  # fmt: skip
    assert code == 2
    assert "--state: cannot read" in err
    assert "key.pem" in err
    for interval in ("0", "-1", "soon"):
        with pytest.raises(SystemExit) as exited:
            main(["portal", "dispatch", "--state", str(state), "--outbox", str(outbox),
                  "--interval", interval])  # fmt: skip
        assert exited.value.code == 2
    assert "argument --interval" in capsys.readouterr().err


def test_dispatch_once_with_the_gateway_out_of_reach_is_exit_3(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = tmp_path / "outbox.db"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    once = _portal("dispatch", "--state", str(state), "--outbox", str(outbox), "--gateway-url",
                   url, "--once")  # fmt: skip
    assert once.returncode == 2  # no outbox yet
    assert _enqueue(capsys, state, outbox, "--to", "AG001", "--body", "{}")[0] == 0
    once = _portal("dispatch", "--state", str(state), "--outbox", str(outbox), "--gateway-url",
                   url, "--once")  # fmt: skip
    assert once.returncode == 3, once.stdout + once.stderr
    assert "0 delivered, 0 held, 0 failed, 0 retried" in once.stdout
    assert "stopped    agency states unavailable" in once.stdout
    assert _status(capsys, outbox)["totals"] == _counts(pending=1)  # nothing changed


def test_dispatch_until_stopped_logs_each_pass_the_gateway_is_out_of_reach(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox, log = tmp_path / "outbox.db", tmp_path / "portal.log"
    assert _enqueue(capsys, state, outbox, "--to", "AG001", "--body", "{}")[0] == 0
    url = f"http://127.0.0.1:{free_port()}"
    argv = pasarela_argv("portal", "dispatch", "--state", str(state), "--outbox", str(outbox),
                         "--gateway-url", url, "--interval", "0.1")  # fmt: skip
    with child_process("portal", argv, port=0, log=log) as portal:
        deadline = time.monotonic() + 30
        while log.read_text().count('"outbox-pass"') < 2:
            assert portal.process.poll() is None, portal.tail()
            assert time.monotonic() < deadline, portal.tail()
            time.sleep(0.05)
    assert portal.process.returncode == 0, portal.tail()  # SIGTERM: a clean stop
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    passes = [e for e in events if e["event"] == "outbox-pass"]
    assert len(passes) >= 2
    for event in passes:
        assert event["level"] == "warning"
        assert event["stopped"].startswith("agency states unavailable: ")
        assert (event["delivered"], event["held"], event["retry"]) == (0, 0, 0)
    last = events[-1]
    assert (last["event"], last["pending"], last["delivered"]) == ("stopping", 1, 0)


def test_dispatch_once_with_nothing_to_send_asks_no_gateway(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = tmp_path / "outbox.db"
    Outbox(outbox, clock=SystemClock(), new_jti=lambda: "unused").close()
    url = f"http://127.0.0.1:{free_port()}"
    once = _portal("dispatch", "--state", str(state), "--outbox", str(outbox), "--gateway-url",
                   url, "--once")  # fmt: skip
    assert once.returncode == 0, once.stderr
    assert "nothing to send" in once.stdout


# -- end to end: init, the agency host, the gateway, the operator, the dispatcher ------------


def _transition(gateway_url: str, state: Path, agency: str, event: str) -> dict[str, Any]:
    """``POST /v1/admin/agencies/AGENCY/transitions`` as the state's operator."""
    token = (state / "operator" / "token.jwt").read_text().strip()
    request = urllib.request.Request(
        f"{gateway_url}/v1/admin/agencies/{agency}/transitions",
        data=json.dumps({"event": event, "reason": "test_cli_portal"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _wait_for(outbox: Path, agency: str, expected: dict[str, int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with Outbox(outbox, clock=SystemClock(), new_jti=lambda: "unused") as reader:
            counts = reader.counts().get(agency)
        if counts == expected:
            return
        assert time.monotonic() < deadline, f"{agency}: {counts}, expected {expected}"
        time.sleep(0.1)


def test_a_backlog_held_while_the_agency_is_disconnected_is_delivered_when_it_is_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway_port, agents_port = free_ports(2)
    state, outbox = tmp_path / "state", tmp_path / "outbox.db"
    init = subprocess.run(
        pasarela_argv("init", str(state), "--agencies", "2",
                      "--agents-url", f"http://127.0.0.1:{agents_port}"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    gateway_argv = pasarela_argv("serve", "--state", str(state), "--port", str(gateway_port))
    agents_argv = pasarela_argv(
        "agents", "serve", "--state", str(state), "--port", str(agents_port)
    )
    with (
        child_process("gateway", gateway_argv, port=gateway_port, log=tmp_path / "gw.log") as gw,
        child_process("agents", agents_argv, port=agents_port, log=tmp_path / "ag.log") as ag,
    ):
        asyncio.run(wait_healthy(gw))
        asyncio.run(wait_healthy(ag))
        dispatch = ("dispatch", "--state", str(state), "--outbox", str(outbox),
                    "--gateway-url", gw.url)  # fmt: skip
        for n in range(3):
            code, _, err = _enqueue(capsys, state, outbox, "--to", "AG001", "--service", "ping",
                                    "--body", json.dumps({"n": n}),
                                    "--jti", f"PORTAL-AG001-{n:07d}")  # fmt: skip
            assert code == 0, err

        # The operator disconnects AG001: its requests are held, none is sent.
        assert _transition(gw.url, state, "AG001", "disconnect")["to"] == "disconnected"
        once = _portal(*dispatch, "--once")
        assert once.returncode == 0, once.stdout + once.stderr
        assert "0 delivered, 3 held, 0 failed, 0 retried" in once.stdout
        assert "held       1-3: AG001 is disconnected in the configuration document" in once.stdout
        document = _status(capsys, outbox)
        assert document["agencies"] == {"AG001": _counts(held=3)}
        assert [(i["id"], i["attempts"]) for i in document["held"]] == [(1, 0), (2, 0), (3, 0)]

        # AG001 is connected again (disconnected -> connected): all three go, in order.
        assert _transition(gw.url, state, "AG001", "connect")["to"] == "connected"
        once = _portal(*dispatch, "--once")
        assert once.returncode == 0, once.stdout + once.stderr
        assert "3 delivered, 0 held, 0 failed, 0 retried" in once.stdout
        assert "delivered  1-3" in once.stdout
        document = _status(capsys, outbox)
        assert document["agencies"] == {"AG001": _counts(delivered=3)}
        assert document["held"] == document["failed"] == []
        with Outbox(outbox, clock=SystemClock(), new_jti=lambda: "unused") as reader:
            replies = [(i.reply_status, json.loads(i.reply_body or b"")) for i in reader.items()]
        assert replies == [(200, {"n": 0}), (200, {"n": 1}), (200, {"n": 2})]  # ping echoes

        # A request no reconnection can deliver fails for good: exit 1.
        assert _enqueue(capsys, state, outbox, "--to", "AG999", "--service", "ping",
                        "--body", "{}")[0] == 0  # fmt: skip
        once = _portal(*dispatch, "--once")
        assert once.returncode == 1, once.stdout + once.stderr
        assert "0 delivered, 0 held, 1 failed, 0 retried" in once.stdout
        [failed] = _status(capsys, outbox)["failed"]
        assert failed["to"] == "AG999"
        assert "unknown-receiver" in failed["problem"]

        # Until stopped: a pass every 0.2 s, each one that did something logged as JSON.
        for n in range(2):
            assert _enqueue(capsys, state, outbox, "--to", "AG002", "--service", "ping",
                            "--body", json.dumps({"m": n}))[0] == 0  # fmt: skip
        log = tmp_path / "portal.log"
        argv = pasarela_argv("portal", *dispatch, "--interval", "0.2")
        with child_process("portal", argv, port=0, log=log) as portal:
            _wait_for(outbox, "AG002", _counts(delivered=2))
        assert portal.process.returncode == 0, portal.tail()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert events[0]["event"] == "dispatching"
    assert events[0]["interval"] == 0.2
    passes = [e for e in events if e["event"] == "outbox-pass"]
    assert sum(e["delivered"] for e in passes) == 2
    assert all(e["service"] == "portal-dispatch" and e["stopped"] is None for e in passes)
    assert events[-1]["event"] == "stopping"
    assert events[-1]["delivered"] == 5
    assert events[-1]["failed"] == 1
