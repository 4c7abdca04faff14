"""Errors raised by the format readers: they always name the file (and line when known)."""
from __future__ import annotations


class FormatError(ValueError):
    """A malformed dataset or result file. ``str()`` reads ``path:line: problem``."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
