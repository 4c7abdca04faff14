"""Write a file so that readers see the old content or the new one, never half of it."""
from __future__ import annotations

from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write to ``<name>.tmp`` next to ``path``, then rename over it (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)
    return path
