"""Relay benchmark: signed round trips through the gateway against a plain reverse proxy.

One run, one process tree, loopback only. It creates a temporary state, starts one agency
host (``pasarela agents serve``), one gateway (``pasarela serve``: verification both ways,
receipts, hash-chained SQLite log) and one plain proxy (``bench/plain_proxy.py``), then
drives both paths with the same fixed-concurrency aiohttp client:

    (a) client -> plain proxy -> agency host   no crypto or log in the middle
    (b) client -> gateway     -> agency host   the real relay

The agency host does the same work in both paths (verify the sender's signature and a
gateway receipt, sign an answer): for (a) the client sends a receipt signed with the
gateway's key, which the proxy passes through; for (b) the gateway makes the real one.
Every message is signed before the timed window, with a unique ``jti``. Timed windows
alternate a, b, b, a, a, b, ... so drift on a shared machine hits both paths alike.

    python bench/relay.py [--seconds 10] [--concurrency 64] [--agencies 145]

``--seconds`` is the timed load per path. Exit 0 after printing the results (this is a
benchmark, not a test), 3 when the setup failed (state, servers, or no message got through).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Final

import aiohttp
from _common import (  # bench/ is on sys.path when run as a script
    EXIT_OK,
    EXIT_SETUP,
    Tally,
    Target,
    add_load_options,
    client_probe,
    cpu_per_op,
    load_main,
    log_seq,
    machine_line,
    make_state,
    measure,
    pid_probe,
    print_anomalies,
    print_logs,
)

from gateway.state import StateError
from pasarela.processes import (
    Child,
    StartupError,
    child_process,
    free_port,
    pasarela_argv,
    wait_healthy,
)

BENCH_DIR: Final = Path(__file__).resolve().parent
PROXY_SCRIPT: Final = BENCH_DIR / "plain_proxy.py"
TARGET_RATIO: Final = 0.30
TARGET_RATE: Final = 2_000.0
PATHS: Final = ("a", "b")
LABELS: Final = {"a": "(a) plain proxy", "b": "(b) gateway"}


# -- report ---------------------------------------------------------------------------------


def _report(tallies: dict[str, Tally], *, args: argparse.Namespace, log_seq: int | None) -> None:
    print()
    print(
        f"{'path':<17}{'requests':>9}{'round trips/s':>15}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'429s':>6}   CPU us per round trip (relay/host/client)"
    )
    for path in PATHS:
        t = tallies[path]
        cpu = "/".join(cpu_per_op(t.cpu[role], t.ok) for role in ("relay", "host", "client"))
        print(
            f"{LABELS[path]:<17}{t.ok:>9}{t.rate:>15.0f}{t.percentile_ms(0.50):>9.1f}"
            f"{t.percentile_ms(0.99):>9.1f}{t.errors:>8}{t.statuses[429]:>6}   {cpu}"
        )
    print_anomalies(tallies, LABELS)
    a, b = tallies["a"].rate, tallies["b"].rate
    ratio = b / a if a else 0.0
    print(f"ratio b/a (gateway / plain proxy throughput): {ratio:.2f}")
    if log_seq is not None:
        print(f"gateway log head after the run: record {log_seq} (2 records per relayed message)")
    print()
    print(
        f"target: ratio >= {TARGET_RATIO:.2f} and >= {TARGET_RATE:,.0f} signed round trips/s "
        "through one gateway process"
    )
    print(f"  ratio b/a            {ratio:>8.2f}   {'PASS' if ratio >= TARGET_RATIO else 'MISS'}")
    print(f"  gateway round trips/s {b:>7.0f}   {'PASS' if b >= TARGET_RATE else 'MISS'}")
    print()
    print(machine_line(f"aiohttp {aiohttp.__version__}"))
    print(
        f"settings: concurrency {args.concurrency}, {tallies['a'].elapsed:.1f}/"
        f"{tallies['b'].elapsed:.1f} s timed (a/b), body {args.body_bytes} bytes, "
        f"{args.agencies} agencies + PORTAL; client, proxy, gateway and host share the machine"
    )


# -- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_options(parser, what="path")
    return parser


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pasarela-bench-")))
        root = temp / "state"
        children: list[Child] = []
        try:
            ports = {name: free_port() for name in ("host", "gateway", "proxy")}
            agents_url = make_state(root, agencies=args.agencies, agents_port=ports["host"])
            cli = pasarela_argv()
            state = ["--state", str(root)]
            specs = {
                "agency host": [*cli, "agents", "serve", *state, "--port", str(ports["host"])],
                "gateway": [*cli, "serve", *state, "--port", str(ports["gateway"])],
                "plain proxy": [
                    sys.executable,
                    str(PROXY_SCRIPT),
                    "--port",
                    str(ports["proxy"]),
                    "--upstream",
                    agents_url,
                ],
            }
            port_of = {"agency host": "host", "gateway": "gateway", "plain proxy": "proxy"}
            for name, argv in specs.items():
                log = temp / f"{name.replace(' ', '-')}.log"
                children.append(
                    stack.enter_context(
                        child_process(name, argv, port=ports[port_of[name]], log=log)
                    )
                )
            host, gateway, proxy = children
            for child in children:
                asyncio.run(wait_healthy(child))
            print(
                f"pids: agency host {host.process.pid}, gateway {gateway.process.pid}, "
                f"plain proxy {proxy.process.pid}, client {os.getpid()}"
            )
            targets = [
                Target(
                    key=path,
                    label=LABELS[path],
                    url=f"{relay.url}/v1/messages",
                    cpu={
                        "relay": pid_probe(relay.process.pid),
                        "host": pid_probe(host.process.pid),
                        "client": client_probe(),
                    },
                    receipts=path == "a",
                )
                for path, relay in (("a", proxy), ("b", gateway))
            ]
            tallies, _ = measure(root, targets, args, watch=children)
        except (StartupError, StateError, OSError, ValueError) as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            print_logs(children)
            return EXIT_SETUP
        _report(tallies, args=args, log_seq=asyncio.run(log_seq(gateway.url)))
        return EXIT_OK


def main() -> int:
    return load_main(_parser(), run)


if __name__ == "__main__":
    sys.exit(main())
