"""The ``pasarela`` command line: :func:`main`, its exit codes and its consoles.

Exit codes of every command: 0 success (all checks held), 1 a check failed, 2 usage or
input error, 3 infrastructure error (a server or file that should be there is not).

The commands themselves, their options and handlers, are in :mod:`pasarela._cli`, which
takes the exit codes and consoles from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from gateway.state import StateError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    # The commands import the names above from this module: load them once it is loaded.
    from pasarela._cli import lab, live, portal, rehearsal
    from pasarela._cli.parser import build_parser

    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            return live.init(args)
        if args.command == "serve":
            return live.serve(args)
        if args.command == "agents":
            return live.agents_serve(args)
        if args.command == "send":
            return live.send(args)
        if args.command == "log":
            return live.log_verify(args)
        if args.command == "portal":
            return portal.run(args)
        if args.command == "run":
            return rehearsal.run(args)
        if args.command == "compare":
            return rehearsal.compare(args)
        if args.command == "plan":
            return rehearsal.plan_validate(args)
        if args.command == "attack":
            return lab.attack(args)
        if args.command == "conformance":
            return lab.conformance(args)
        return live.demo(args)
    except StateError as exc:
        errors.print(f"pasarela: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        errors.print(f"pasarela: {exc}")
        return EXIT_INFRA
    except KeyboardInterrupt:
        return EXIT_FAILED
