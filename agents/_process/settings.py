"""A connector process's settings: :class:`Settings` (where the gateway is, who the agency
is, where to listen) and their parsing from the command-line flags, each defaulting to its
environment variable (:func:`parse_settings`, or :func:`settings_parser`,
:func:`add_env_option` and :func:`settings_from_arguments` for a connector with flags of its
own).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from agents.verification import Identity

DEFAULT_PORT: Final = 8800


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where the gateway is, who this agency is, where to listen."""

    gateway_url: str  # PASARELA_GATEWAY_URL
    agency: str  # PASARELA_AGENCY: the CN of the certificate
    key: Path  # PASARELA_KEY: Ed25519 private key, PEM PKCS#8
    cert: Path  # PASARELA_CERT: the agency's certificate, PEM
    ca: Path | None = None  # PASARELA_CA: the platform CA certificate, PEM
    host: str = "127.0.0.1"  # HOST
    port: int = DEFAULT_PORT  # PORT

    @property
    def endpoint(self) -> str:
        """The URL the gateway delivers this agency's messages to."""
        return f"http://{self.host}:{self.port}/agencies/{self.agency}/messages"

    def load_identity(self) -> Identity:
        """The agency's key and certificate; :class:`ValueError` when the certificate is
        another agency's (or the key is not the certificate's), :class:`OSError` when a
        file cannot be read."""
        identity = Identity.from_files(self.key, self.cert)
        if identity.code != self.agency:
            raise ValueError(f"{self.cert} certifies {identity.code}, not the agency {self.agency}")
        return identity

    def load_ca(self) -> x509.Certificate | None:
        """The platform CA certificate, when one is configured."""
        return x509.load_pem_x509_certificate(self.ca.read_bytes()) if self.ca else None


#: The flags: (flag, environment variable, meaning); the first four are required.
_OPTIONS: Final = (
    ("--gateway-url", "PASARELA_GATEWAY_URL", "the gateway's base URL"),
    ("--agency", "PASARELA_AGENCY", "this agency's code (the certificate's CN)"),
    ("--key", "PASARELA_KEY", "the agency's Ed25519 private key (PEM PKCS#8)"),
    ("--cert", "PASARELA_CERT", "the agency's certificate (PEM)"),
    ("--ca", "PASARELA_CA", "the platform CA certificate (PEM; optional)"),
    ("--host", "HOST", "the address to listen on (default 127.0.0.1)"),
    ("--port", "PORT", f"the port to listen on (default {DEFAULT_PORT})"),
)
_REQUIRED: Final = 4


def add_env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    variable: str,
    meaning: str,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Add ``flag``, defaulting to ``$variable`` (an empty variable counts as unset)."""
    parser.add_argument(flag, default=environ.get(variable) or None, help=f"{meaning}; ${variable}")


def settings_parser(
    *,
    prog: str = "connector.py",
    description: str = "a pasarela agency connector",
    environ: Mapping[str, str] = os.environ,
) -> argparse.ArgumentParser:
    """A parser of the connector's flags, each defaulting to its environment variable; a
    connector adds its own with :func:`add_env_option`, then calls
    :func:`settings_from_arguments`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for flag, variable, meaning in _OPTIONS:
        add_env_option(parser, flag, variable, meaning, environ)
    return parser


def settings_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The :class:`Settings` of parsed arguments; a missing required one or a port that is
    not a number ends the program through ``parser.error`` (exit status 2)."""
    missing = [
        f"{flag} (${variable})"
        for flag, variable, _ in _OPTIONS[:_REQUIRED]
        if not getattr(args, flag[2:].replace("-", "_"))
    ]
    if missing:
        parser.error(f"missing: {', '.join(missing)}")
    try:
        port = int(args.port) if args.port else DEFAULT_PORT
    except ValueError:
        parser.error(f"--port/$PORT: not a number: {args.port!r}")
    return Settings(
        gateway_url=args.gateway_url,
        agency=args.agency,
        key=Path(args.key),
        cert=Path(args.cert),
        ca=Path(args.ca) if args.ca else None,
        host=args.host or "127.0.0.1",
        port=port,
    )


def parse_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    prog: str = "connector.py",
    description: str = "a pasarela agency connector",
) -> Settings:
    """Settings from command-line flags (``argv``; None: ``sys.argv``), each defaulting to
    its environment variable."""
    parser = settings_parser(prog=prog, description=description, environ=environ)
    return settings_from_arguments(parser, parser.parse_args(argv))
