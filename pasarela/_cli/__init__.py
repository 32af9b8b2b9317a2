"""The ``pasarela`` commands; the entry point is :func:`pasarela.cli.main`.

A private package: run the command line through :mod:`pasarela.cli`. By concern:

    parser     the top-level parser: every command, in the order ``pasarela --help`` lists them
    live       init, serve, agents serve, send, log verify, demo: the gateway and agency host
               as real servers and what is done with them
    portal     portal enqueue, status, dispatch: the Transparency Portal's outbox
    rehearsal  run, compare, plan validate: scenarios in virtual time
    lab        attack, conformance: adversary profiles and the connector conformance kit,
               against a live server

Each command's options (``add_<command>_parser``) are next to its handler. The modules take
the exit codes and consoles from :mod:`pasarela.cli`, and handlers import their machinery
when they run, so ``pasarela --help`` stays fast.
"""
