"""``rtsleep-train fetch``: download PhysioNet sleep databases with resume and sha256 checks.

PhysioNet serves every database version under ``<base>/<slug>/<version>/`` and publishes a
``SHA256SUMS.txt`` there listing ``<sha256>  <relative path>`` for every file. ``fetch`` reads that
list, downloads the selected files into ``DEST/<relative path>`` through ``<name>.part`` files
(resumed with HTTP ``Range`` requests after an interruption, within a run and across runs), checks
each file's sha256 and only then renames it into place. A file whose sha256 does not match is
removed and reported; files already present with the right sha256 are skipped.

SHHS is not on PhysioNet: NSRR (sleepdata.org) releases it only to registered users who accept its
data-use agreement, with a personal download token. rtsleep does not fetch it: see
:data:`SHHS_HELP`.
"""

from __future__ import annotations

import enum
import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer
from tqdm import tqdm

from offline.clihelp import help_text
from rtsleep.data.errors import DataError

log = logging.getLogger(__name__)

PHYSIONET_BASE = "https://physionet.org/files"
SUMS_FILE = "SHA256SUMS.txt"
CHUNK_BYTES = 1 << 16

#: rtsleep dataset name -> (PhysioNet slug, version).
PHYSIONET_DATABASES: dict[str, tuple[str, str]] = {
    "sleep-edf": ("sleep-edfx", "1.0.0"),
    "apnea-ecg": ("apnea-ecg", "1.0.0"),
    "ucddb": ("ucddb", "1.0.0"),
    "slpdb": ("slpdb", "1.0.0"),
}

SHHS_HELP = (
    "SHHS is distributed by the National Sleep Research Resource (sleepdata.org), not PhysioNet: "
    "request access to the 'shhs' dataset with an NSRR account, accept its data-use agreement, "
    "then download with NSRR's own tools and your personal token (for example the 'nsrr' Ruby gem: "
    "`nsrr download shhs/polysomnography/edfs/shhs1` and "
    "`nsrr download shhs/polysomnography/annotations-events-nsrr/shhs1`, which prompt for the "
    "token). rtsleep cannot fetch it for you; ingest the downloaded EDF + XML folders with "
    "`rtsleep-train ingest DIR --dataset shhs --out STORE`."
)


class FetchDataset(enum.StrEnum):
    """Databases ``rtsleep-train fetch`` knows (``shhs`` only prints how to get it from NSRR)."""

    sleep_edf = "sleep-edf"
    apnea_ecg = "apnea-ecg"
    ucddb = "ucddb"
    slpdb = "slpdb"
    shhs = "shhs"


class IncompleteDownload(OSError):
    """The server closed the connection before sending the announced bytes."""


@dataclass
class FetchReport:
    """Outcome of one fetch: relative paths downloaded, skipped (already valid) and failed."""

    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def parse_sha256sums(text: str, source: str = SUMS_FILE) -> dict[str, str]:
    """``sha256sum``-format lines -> {relative path: lowercase hex digest}.

    Blank lines are ignored; a ``*`` binary marker before the path is dropped. Paths that are
    absolute or climb out of the folder raise ``DataError`` naming ``source``.
    """
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(source, f"line {n} is not '<sha256>  <path>': {line[:80]!r}")
        digest, rel = parts[0].lower(), parts[1].lstrip("*")
        try:
            int(digest, 16)
        except ValueError as err:
            raise DataError(source, f"line {n}: {parts[0]!r} is not a hex sha256") from err
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            raise DataError(source, f"line {n}: unsafe path {rel!r}")
        sums[rel] = digest
    if not sums:
        raise DataError(source, "no entries")
    return sums


def select_files(sums: dict[str, str], records: Sequence[str]) -> list[str]:
    """Relative paths to fetch: all of them, or those whose file name starts with a record name.

    ``SC4001`` selects ``SC4001E0-PSG.edf`` and ``SC4001EC-Hypnogram.edf``; ``a01`` selects
    ``a01.dat``, ``a01.apn``, ``a01.hea`` (and ``a01er.*``, whose names share the prefix).
    """
    files = sorted(p for p in sums if p != SUMS_FILE)
    if not records:
        return files
    chosen = [p for p in files if any(PurePosixPath(p).name.startswith(r) for r in records)]
    return chosen


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1-MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_url(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as err:
        raise DataError(url, f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DataError(url, f"cannot download ({err})") from err


def _range_start(content_range: str) -> int | None:
    """First byte of a ``Content-Range: bytes a-b/n`` header, ``None`` if malformed."""
    unit, _, spec = content_range.partition(" ")
    first = spec.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _transfer(url: str, part: Path, timeout_s: float, bar: tqdm | None) -> None:
    """One GET of ``url`` into ``part``, resuming from its current size when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            log.debug("%s: range past end, .part is complete (%d bytes)", url, have)
            return
        raise
    with resp:
        if have and resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                part.unlink(missing_ok=True)
                raise IncompleteDownload(f"server resumed at byte {start}, not {have}; restarting")
            mode = "ab"
        else:  # full body (no range asked, or the server ignored it)
            mode, have = "wb", 0
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        got = 0
        if bar is not None:
            bar.reset(total=(have + expected) if expected is not None else None)
            bar.update(have)
        with open(part, mode) as fh:
            while True:
                block = resp.read(CHUNK_BYTES)
                if not block:
                    break
                fh.write(block)
                got += len(block)
                if bar is not None:
                    bar.update(len(block))
        if expected is not None and got < expected:
            raise IncompleteDownload(f"connection closed after {got} of {expected} bytes")


def download_file(
    url: str,
    dest: Path,
    sha256: str,
    retries: int = 3,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> None:
    """Download ``url`` to ``dest`` through ``dest.part`` with resume; verify ``sha256``.

    Interrupted transfers are retried ``retries`` times, each resuming with an HTTP ``Range``
    request from the bytes already in the ``.part`` file (kept between runs too). A wrong sha256
    removes the partial file and raises ``DataError``; so do HTTP errors and exhausted retries
    (the ``.part`` file is then kept for the next run).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    bar = tqdm(
        desc=dest.name, unit="B", unit_scale=True, file=sys.stderr, leave=False,
        disable=not progress,
    )
    try:
        for attempt in range(retries + 1):
            try:
                _transfer(url, part, timeout_s, bar)
                break
            except urllib.error.HTTPError as err:
                raise DataError(url, f"HTTP {err.code} {err.reason}") from err
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                kept = part.stat().st_size if part.exists() else 0
                if attempt == retries:
                    raise DataError(
                        url, f"download failed after {retries + 1} tries ({err}); "
                        f"{kept} bytes kept in {part.name} for resume"
                    ) from err
                log.info("%s: %s; resuming from byte %d", url, err, kept)
    finally:
        bar.close()
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise DataError(dest, f"sha256 mismatch (got {digest}, SHA256SUMS.txt says {sha256}); "
                        "file removed")
    os.replace(part, dest)


def fetch_database(
    dataset: str,
    dest: Path,
    base_url: str = PHYSIONET_BASE,
    records: Sequence[str] = (),
    version: str | None = None,
    retries: int = 3,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> FetchReport:
    """Fetch one PhysioNet database (or the files of some records) into ``dest``.

    ``base_url`` replaces ``https://physionet.org/files`` (mirrors, tests); files come from
    ``<base_url>/<slug>/<version>/<path>``. Failures of single files are collected in the report;
    a missing or malformed ``SHA256SUMS.txt`` or an empty selection raises ``DataError``.
    """
    if dataset not in PHYSIONET_DATABASES:
        if dataset == "shhs":
            raise DataError("shhs", SHHS_HELP)
        raise DataError(dataset, f"unknown PhysioNet database (known: {list(PHYSIONET_DATABASES)})")
    if not base_url.startswith(("http://", "https://")):
        raise DataError(base_url, "base URL must start with http:// or https://")
    slug, default_version = PHYSIONET_DATABASES[dataset]
    root_url = f"{base_url.rstrip('/')}/{slug}/{version or default_version}"
    sums_url = f"{root_url}/{SUMS_FILE}"
    sums = parse_sha256sums(_read_url(sums_url, timeout_s).decode("utf-8", "replace"), sums_url)
    files = select_files(sums, records)
    if not files:
        raise DataError(sums_url, f"no file matches the records {list(records)}")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / SUMS_FILE).write_text("".join(f"{sums[p]}  {p}\n" for p in sorted(sums)))
    report = FetchReport()
    for rel in tqdm(files, desc=f"fetch {dataset}", unit="file", file=sys.stderr,
                    disable=not progress):
        target = dest / rel
        if target.is_file() and sha256_file(target) == sums[rel]:
            report.skipped.append(rel)
            continue
        try:
            download_file(f"{root_url}/{rel}", target, sums[rel], retries, timeout_s, progress)
            report.downloaded.append(rel)
        except DataError as err:
            log.debug("failed: %s", err)
            report.failed.append((rel, str(err)))
    return report


def _split_records(values: Iterable[str]) -> list[str]:
    return [r for v in values for r in v.replace(",", " ").split() if r]


def fetch_command(
    dataset: Annotated[FetchDataset, typer.Argument(help="Database to download.")],
    dest: Annotated[Path, typer.Option("--dest", help="Folder to download into.")],
    base_url: Annotated[
        str, typer.Option("--base-url", help="PhysioNet 'files' root or a mirror of its layout.")
    ] = PHYSIONET_BASE,
    records: Annotated[
        list[str] | None,
        typer.Option("--records", help="Record name prefixes to fetch (repeat or comma-separate)."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Database version (default: the known one).")
    ] = None,
    retries: Annotated[int, typer.Option(help="Resumed retries per file.")] = 3,
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr.")] = True,
) -> None:
    """Download a PhysioNet sleep database with resume, verified against its SHA256SUMS.txt.

    Databases: sleep-edf (= sleep-edfx 1.0.0, about 8 GB; --records SC4001 for a subset),
    apnea-ecg, ucddb and slpdb (1.0.0). Interrupted files resume from their .part file.

    SHHS needs an NSRR account, a signed data-use agreement and a personal token, so it is not
    fetched here: `fetch shhs` explains how to get it.
    """
    if dataset is FetchDataset.shhs:
        typer.echo(f"shhs: {SHHS_HELP}", err=True)
        raise typer.Exit(2)
    try:
        report = fetch_database(
            dataset.value, dest, base_url, _split_records(records or []), version, retries,
            progress=progress,
        )
    except DataError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(
        f"{dataset.value}: {len(report.downloaded)} downloaded, {len(report.skipped)} already "
        f"present, {len(report.failed)} failed -> {dest}"
    )
    if report.failed:
        for rel, msg in report.failed:
            typer.echo(f"failed: {rel}: {msg}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``fetch`` to the ``rtsleep-train`` app."""
    app.command("fetch", help=help_text(fetch_command.__doc__))(fetch_command)
