"""Errors raised for bad input files.

Every error names the file (or stream) and says what is wrong in one line, so that a CLI can print
``str(err)`` as is.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data: ``"<source>: <problem>"``."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
