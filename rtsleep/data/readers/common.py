"""Helpers shared by the readers: source hashing and sub-record source paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rtsleep.data.errors import DataError

RECORD_SEP = "#"
"""Separator of a sub-record source: ``<table file>#<record id>`` (one file, many recordings)."""


def sha256_files(*paths: Path) -> str:
    """sha256 (hex) over the bytes of ``paths`` in the given order."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sub_record_source(table: Path, record_id: str) -> Path:
    """Source path for one recording inside a multi-record table file."""
    return table.with_name(f"{table.name}{RECORD_SEP}{record_id}")


def split_sub_record(source: Path) -> tuple[Path, str | None]:
    """``(file, record_id)`` for ``<file>#<record_id>``; ``(source, None)`` for a plain file."""
    name = source.name
    if RECORD_SEP in name:
        file_name, record_id = name.split(RECORD_SEP, 1)
        return source.with_name(file_name), record_id
    return source, None


def require_file(source: Path) -> None:
    """``DataError`` unless ``source`` is an existing regular file."""
    if not source.exists():
        raise DataError(source, "file not found")
    if not source.is_file():
        raise DataError(source, "not a file")
