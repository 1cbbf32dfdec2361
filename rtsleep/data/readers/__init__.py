"""Reader registry: one module per source format.

``list_sources(dataset, path)`` finds the recordings under a file or folder (sorted, one path per
recording) and ``read_recording(dataset, source)`` reads one of them. Sources inside a multi-record
table (ucddb ``epochs.csv``) are written ``<file>#<record id>``. Every failure on bad input is a
``DataError`` naming the file. ``rtsleep-train ingest`` is built on exactly these two functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.recording import Recording

_READERS: dict[str, tuple[str, str, str]] = {
    "sleep-edf": ("sleepedf", "list_sleepedf_sources", "read_sleepedf"),
    "shhs": ("nsrr", "list_nsrr_sources", "read_nsrr"),
    "dreams": ("dreams", "list_dreams_sources", "read_dreams"),
    "ucddb": ("ucddb", "list_ucddb_sources", "read_ucddb"),
    "slpdb": ("slpdb", "list_slpdb_sources", "read_slpdb"),
    "apnea-ecg": ("apnea_ecg", "list_apnea_ecg_sources", "read_apnea_ecg"),
    "edf": ("edf", "list_edf_sources", "read_edf"),
}
"""Dataset name -> (reader module in this package, its source lister, its reader)."""

DATASETS: tuple[str, ...] = tuple(_READERS)
"""Dataset names accepted by :func:`list_sources` and :func:`read_recording`."""

_Lister = Callable[[Path], list[Path]]
_Reader = Callable[[Path, ChannelMap | None], Recording]


def _registry(dataset: str, path: Path) -> tuple[_Lister, _Reader]:
    """The lister and reader of ``dataset``; ``DataError`` naming ``path`` if it is unknown."""
    if dataset not in _READERS:
        expected = ", ".join(DATASETS)
        raise DataError(path, f"unknown dataset {dataset!r} (expected one of {expected})")
    module_name, lister, reader = _READERS[dataset]
    # Imported lazily so that reading one format never imports the others' dependencies.
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, lister), getattr(module, reader)


def list_sources(dataset: str, path: Path) -> list[Path]:
    """Recordings of ``dataset`` under ``path`` (a file or a folder), sorted.

    Raises ``DataError`` for an unknown dataset or a path that does not exist.
    """
    path = Path(path)
    lister, _ = _registry(dataset, path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    return lister(path)


def read_recording(
    dataset: str, source: Path, channel_map: ChannelMap | None = None
) -> Recording:
    """Read one recording of ``dataset`` from ``source`` (a path from :func:`list_sources`)."""
    source = Path(source)
    _, reader = _registry(dataset, source)
    return reader(source, channel_map)


__all__ = ["DATASETS", "list_sources", "read_recording"]
