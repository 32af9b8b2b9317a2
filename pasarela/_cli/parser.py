"""The ``pasarela`` argument parser: every command, in the order ``--help`` lists them.

Each command's options are defined next to its handler, in :mod:`pasarela._cli.live`,
:mod:`pasarela._cli.portal`, :mod:`pasarela._cli.rehearsal` and :mod:`pasarela._cli.lab`.
"""

from __future__ import annotations

import argparse

from pasarela._cli import lab, live, portal, rehearsal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pasarela",
        description="Simulator of a national agency-interoperability gateway.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    live.add_init_parser(commands)
    live.add_serve_parser(commands)
    live.add_agents_parser(commands)
    live.add_send_parser(commands)
    portal.add_portal_parser(commands)
    live.add_log_parser(commands)
    rehearsal.add_run_parser(commands)
    lab.add_attack_parser(commands)
    lab.add_conformance_parser(commands)
    rehearsal.add_plan_parser(commands)
    rehearsal.add_compare_parser(commands)
    live.add_demo_parser(commands)
    return parser
