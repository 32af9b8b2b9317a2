"""How the rehearsal scales: the default world at 1x, 10x and 100x agencies and requests.

    python bench/sim_scale.py                 # factors 1, 10, 100
    python bench/sim_scale.py --factors 1,10  # a quicker look

Each factor runs in its own process (so its peak RSS is its own): every institution count,
every growth curve, every wave and the fallback are multiplied by the factor, and since
demand is per institution, so are the requests and the messages. Prints wall time,
simulated days, events and log records per second, and peak RSS per factor, then the
cost per event relative to 1x (about 1.0 means linear growth). Figures from one run on a
shared machine; see bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from scenarios.model import Plan, Point, Scenario, Wave, load_scenario
from scenarios.runner import run_scenario

DEFAULT = Path(__file__).resolve().parent.parent / "scenarios" / "library" / "pisee-2015.toml"
RSS_LIMIT_GIB = 4.0


def scaled(scenario: Scenario, factor: int) -> Scenario:
    """The same world with every institution count (and so the demand) times ``factor``."""
    if factor == 1:
        return scenario
    world = dataclasses.replace(
        scenario.world,
        central_agencies=scenario.world.central_agencies * factor,
        central_target=scenario.world.central_target * factor,
        municipalities=scenario.world.municipalities * factor,
        autonomous=scenario.world.autonomous * factor,
    )

    def points(series: tuple[Point, ...]) -> tuple[Point, ...]:
        return tuple(dataclasses.replace(p, count=p.count * factor) for p in series)

    growth = dataclasses.replace(
        scenario.growth,
        central_linked=points(scenario.growth.central_linked),
        municipalities_on_portal=points(scenario.growth.municipalities_on_portal),
        autonomous_on_portal=points(scenario.growth.autonomous_on_portal),
    )
    codes = iter(world.central_codes())
    waves = tuple(
        Wave(
            name=w.name,
            start=w.start,
            agencies=tuple(next(codes) for _ in range(len(w.agencies) * factor)),
        )
        for w in scenario.plan.waves
    )
    remaining = list(codes)
    fallback = (
        tuple(remaining[-len(scenario.plan.fallback) * factor :]) if scenario.plan.fallback else ()
    )
    plan: Plan = dataclasses.replace(scenario.plan, waves=waves, fallback=fallback)
    return dataclasses.replace(scenario, world=world, growth=growth, plan=plan)


def child(factor: int, out: Path) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    scenario = scaled(load_scenario(DEFAULT), factor)
    started = time.perf_counter()
    output = run_scenario(scenario, out, wall_clock=time.time)
    wall = time.perf_counter() - started
    results = output.results
    print(
        json.dumps(
            {
                "factor": factor,
                "wall": wall,
                "days": results["simulated"]["days"],
                "events": results["simulated"]["events"],
                "records": results["gateway"]["log_records"],
                "requests": results["ati"]["groups"]["all"]["filed"],
                "log_verified": results["gateway"]["log_verified"],
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", default="1,10,100")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.out)
        return 0
    factors = [int(f) for f in args.factors.split(",")]
    python = platform.python_version()
    print(f"machine: {os.cpu_count()} CPUs, CPython {python}, {platform.platform()}")
    rows = []
    for factor in factors:
        with tempfile.TemporaryDirectory(prefix="pasarela-sim-") as out:
            argv = [sys.executable, __file__, "--child", str(factor), "--out", out]
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            assert process.stdout is not None
            stdout = process.stdout.read()
            # Reap it ourselves: wait4 gives this child's own resource usage (peak RSS).
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            rss = _peak_rss_gib(usage)
            if process.returncode != 0 or not stdout.strip():
                print(f"{factor}x: failed (exit {process.returncode})")
                continue
            row = json.loads(stdout.strip().splitlines()[-1])
            row["rss_gib"] = rss
            rows.append(row)
            print(
                f"{factor:>4}x  wall {row['wall']:8.1f} s  {row['days']} simulated days  "
                f"requests {row['requests']:>9,}  events {row['events']:>10,} "
                f"({row['events'] / row['wall']:>8,.0f}/s)  log records {row['records']:>9,} "
                f"({row['records'] / row['wall']:>6,.0f}/s)  peak RSS {_gib(rss)}"
                f"  log {'intact' if row['log_verified'] else 'BROKEN'}"
            )
    if rows:
        base = rows[0]["wall"] / rows[0]["events"]
        print("cost per event relative to the first factor (1.0 = linear growth):")
        for row in rows:
            ratio = (row["wall"] / row["events"]) / base
            limit = ""
            if row["rss_gib"] is not None:
                ok = row["rss_gib"] < RSS_LIMIT_GIB
                limit = f"; peak RSS {'under' if ok else 'OVER'} {RSS_LIMIT_GIB:g} GiB"
            print(f"  {row['factor']:>4}x  {ratio:.2f}{limit}")
    return 0


def _peak_rss_gib(usage: object) -> float | None:
    maxrss = getattr(usage, "ru_maxrss", None)
    return None if maxrss is None else maxrss / (1024 * 1024)  # Linux reports KiB


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


if __name__ == "__main__":
    raise SystemExit(main())
