"""pasarela: a simulator of a national agency-interoperability gateway."""

__version__ = "0.1.0.dev0"
