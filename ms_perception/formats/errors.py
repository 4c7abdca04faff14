"""Errors raised by the format readers: they always name the file (and line when known)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class FormatError(ValueError):
    """A malformed dataset or result file. ``str()`` reads ``path:line: problem``."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; a missing file or bad JSON becomes an error naming ``what`` and the path."""
    p = Path(path)
    try:
        with p.open() as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(str(p), exc.lineno, f"invalid JSON: {exc.msg}") from None
