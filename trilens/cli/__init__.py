"""The ``trilens`` command line: a thin entry (``main``) and one module per subcommand."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
