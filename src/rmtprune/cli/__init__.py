"""The ``rmtprune`` command line: parsing and printing over the public API.

``main`` is the console entry point and the one error boundary (exit 2 and one line for a
usage or input error).
"""

from rmtprune.cli.app import main

__all__ = ["main"]
