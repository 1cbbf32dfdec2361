"""Reader registry: one module per source format.

``list_sources(dataset, path)`` finds the recordings under a file or folder (sorted, one path per
recording) and ``read_recording(dataset, source)`` reads one of them. Sources inside a multi-record
table (ucddb ``epochs.csv``) are written ``<file>#<record id>``. Every failure on bad input is a
``DataError`` naming the file. ``rtsleep-train ingest`` is built on exactly these two functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rtsleep.data.channels import ChannelMap
from rtsleep.data.errors import DataError
from rtsleep.data.recording import Recording

DATASETS: tuple[str, ...] = ("sleep-edf", "shhs", "dreams", "ucddb", "slpdb", "apnea-ecg", "edf")
"""Dataset names accepted by :func:`list_sources` and :func:`read_recording`."""

_Lister = Callable[[Path], list[Path]]
_Reader = Callable[[Path, ChannelMap | None], Recording]


def _check_dataset(dataset: str, path: Path) -> None:
    if dataset not in DATASETS:
        expected = ", ".join(DATASETS)
        raise DataError(path, f"unknown dataset {dataset!r} (expected one of {expected})")


def _registry(dataset: str) -> tuple[_Lister, _Reader]:
    # Imported lazily so that reading one format never imports the others' dependencies.
    if dataset == "sleep-edf":
        from rtsleep.data.readers import sleepedf

        return sleepedf.list_sleepedf_sources, sleepedf.read_sleepedf
    if dataset == "dreams":
        from rtsleep.data.readers import dreams

        return dreams.list_dreams_sources, dreams.read_dreams
    if dataset == "shhs":
        from rtsleep.data.readers import nsrr

        return nsrr.list_nsrr_sources, nsrr.read_nsrr
    if dataset == "ucddb":
        from rtsleep.data.readers import ucddb

        return ucddb.list_ucddb_sources, ucddb.read_ucddb
    if dataset == "slpdb":
        from rtsleep.data.readers import slpdb

        return slpdb.list_slpdb_sources, slpdb.read_slpdb
    if dataset == "apnea-ecg":
        from rtsleep.data.readers import apnea_ecg

        return apnea_ecg.list_apnea_ecg_sources, apnea_ecg.read_apnea_ecg
    if dataset == "edf":
        from rtsleep.data.readers import edf

        return edf.list_edf_sources, edf.read_edf
    raise DataError(dataset, "no reader yet for this dataset")


def list_sources(dataset: str, path: Path) -> list[Path]:
    """Recordings of ``dataset`` under ``path`` (a file or a folder), sorted.

    Raises ``DataError`` for an unknown dataset or a path that does not exist.
    """
    path = Path(path)
    _check_dataset(dataset, path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    lister, _ = _registry(dataset)
    return lister(path)


def read_recording(
    dataset: str, source: Path, channel_map: ChannelMap | None = None
) -> Recording:
    """Read one recording of ``dataset`` from ``source`` (a path from :func:`list_sources`)."""
    source = Path(source)
    _check_dataset(dataset, source)
    _, reader = _registry(dataset)
    return reader(source, channel_map)


__all__ = ["DATASETS", "list_sources", "read_recording"]
