"""`rtsleep-train fetch` against a local PhysioNet-layout HTTP server on 127.0.0.1.

The server (a thread) serves tmp files under ``/files/<slug>/<version>/``, honours ``Range``
requests, logs every request, and can cut the first transfer of a file short to prove resume.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from offline.cli import app
from offline.fetch import download_file, parse_sha256sums, select_files
from rtsleep.data.errors import DataError


@dataclass
class ServerState:
    root: Path
    #: (path, Range header or "") per GET, in order.
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: Paths whose next full transfer is cut after this many bytes.
    cut_once: dict[str, int] = field(default_factory=dict)
    honour_range: bool = True


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range", "")
            state.requests.append((self.path, rng))
            rel = self.path.removeprefix("/files/")
            f = state.root / rel
            if ".." in rel or not f.is_file():
                self.send_error(404)
                return
            body = f.read_bytes()
            start = 0
            if rng and state.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            cut = state.cut_once.pop(self.path, None)
            if cut is not None:
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture()
def physionet(tmp_path: Path) -> Iterator[tuple[str, ServerState]]:
    """A fake physionet.org/files with apnea-ecg 1.0.0: three records and SHA256SUMS.txt."""
    root = tmp_path / "server"
    db = root / "apnea-ecg" / "1.0.0"
    db.mkdir(parents=True)
    files = {
        "a01.hea": b"a01 1 100 2957000\n",
        "a01.apn": bytes(range(256)) * 40,
        "a02.dat": bytes((i * 7) % 251 for i in range(200_000)),
        "b01.hea": b"b01 1 100 2000\n",
        "sub/c01.qrs": b"qrs" * 100,
    }
    lines = []
    for rel, data in files.items():
        (db / rel).parent.mkdir(parents=True, exist_ok=True)
        (db / rel).write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {rel}\n")
    (db / "SHA256SUMS.txt").write_text("".join(lines))
    state = ServerState(root=root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/files", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _fetch(base: str, dest: Path, *extra: str) -> object:
    return CliRunner().invoke(
        app, ["fetch", "apnea-ecg", "--dest", str(dest), "--base-url", base, "--no-progress",
              *extra],
    )


def test_fetch_downloads_every_listed_file_in_physionet_layout(physionet, tmp_path: Path) -> None:
    base, state = physionet
    dest = tmp_path / "dest"
    result = _fetch(base, dest)
    assert result.exit_code == 0, result.output
    src = state.root / "apnea-ecg" / "1.0.0"
    for rel in ("a01.hea", "a01.apn", "a02.dat", "b01.hea", "sub/c01.qrs"):
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    assert not list(dest.rglob("*.part"))
    assert "5 downloaded" in result.output


def test_fetch_resumes_an_interrupted_download_with_a_range_request(
    physionet, tmp_path: Path
) -> None:
    base, state = physionet
    state.cut_once["/files/apnea-ecg/1.0.0/a02.dat"] = 70_000
    dest = tmp_path / "dest"
    result = _fetch(base, dest, "--records", "a02")
    assert result.exit_code == 0, result.output
    gets = [r for p, r in state.requests if p.endswith("a02.dat")]
    assert gets == ["", "bytes=70000-"]
    assert (dest / "a02.dat").read_bytes() == (state.root / "apnea-ecg/1.0.0/a02.dat").read_bytes()


def test_fetch_resumes_a_part_file_left_by_an_earlier_run(physionet, tmp_path: Path) -> None:
    base, state = physionet
    dest = tmp_path / "dest"
    dest.mkdir()
    full = (state.root / "apnea-ecg/1.0.0/a02.dat").read_bytes()
    (dest / "a02.dat.part").write_bytes(full[:123_456])
    result = _fetch(base, dest, "--records", "a02")
    assert result.exit_code == 0, result.output
    assert [r for p, r in state.requests if p.endswith("a02.dat")] == ["bytes=123456-"]
    assert (dest / "a02.dat").read_bytes() == full


def test_fetch_restarts_when_the_server_ignores_range(physionet, tmp_path: Path) -> None:
    base, state = physionet
    state.honour_range = False
    dest = tmp_path / "dest"
    dest.mkdir()
    full = (state.root / "apnea-ecg/1.0.0/a02.dat").read_bytes()
    (dest / "a02.dat.part").write_bytes(b"garbage" * 10)
    result = _fetch(base, dest, "--records", "a02")
    assert result.exit_code == 0, result.output
    assert (dest / "a02.dat").read_bytes() == full


def test_fetch_sha256_mismatch_is_an_error_and_removes_the_file(physionet, tmp_path: Path) -> None:
    base, state = physionet
    (state.root / "apnea-ecg/1.0.0/a01.apn").write_bytes(b"tampered")
    dest = tmp_path / "dest"
    result = _fetch(base, dest, "--records", "a01")
    assert result.exit_code == 1
    assert "a01.apn" in result.output and "sha256 mismatch" in result.output
    assert not (dest / "a01.apn").exists() and not (dest / "a01.apn.part").exists()
    assert (dest / "a01.hea").is_file()


def test_fetch_skips_files_already_present_and_valid(physionet, tmp_path: Path) -> None:
    base, state = physionet
    dest = tmp_path / "dest"
    assert _fetch(base, dest, "--records", "b01").exit_code == 0
    state.requests.clear()
    result = _fetch(base, dest, "--records", "b01")
    assert result.exit_code == 0 and "1 already present" in result.output
    assert [p for p, _ in state.requests] == ["/files/apnea-ecg/1.0.0/SHA256SUMS.txt"]


def test_fetch_records_filter_selects_by_file_name_prefix(physionet, tmp_path: Path) -> None:
    base, _ = physionet
    dest = tmp_path / "dest"
    result = _fetch(base, dest, "--records", "a01,c01")
    assert result.exit_code == 0, result.output
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["SHA256SUMS.txt", "a01.apn", "a01.hea", "sub/c01.qrs"]


def test_fetch_missing_database_names_the_url(physionet, tmp_path: Path) -> None:
    base, _ = physionet
    result = CliRunner().invoke(
        app, ["fetch", "slpdb", "--dest", str(tmp_path / "d"), "--base-url", base, "--no-progress"]
    )
    assert result.exit_code == 1
    assert "slpdb/1.0.0/SHA256SUMS.txt" in result.output and "404" in result.output


def test_fetch_shhs_explains_the_nsrr_token_path_instead_of_downloading(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fetch", "shhs", "--dest", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "NSRR" in result.output and "token" in result.output
    assert not (tmp_path / "d").exists()


def test_parse_sha256sums_rejects_paths_outside_the_folder() -> None:
    with pytest.raises(DataError, match="unsafe path"):
        parse_sha256sums("0" * 64 + "  ../etc/passwd\n")
    assert parse_sha256sums("A" * 64 + " *x.edf\n") == {"x.edf": "a" * 64}


def test_select_files_without_records_takes_all_but_the_sums_file() -> None:
    sums = {"SHA256SUMS.txt": "0" * 64, "b.edf": "1" * 64, "a.edf": "2" * 64}
    assert select_files(sums, []) == ["a.edf", "b.edf"]


def test_download_file_gives_up_after_retries_and_keeps_the_part(physionet, tmp_path) -> None:
    base, state = physionet
    url = f"{base}/apnea-ecg/1.0.0/a02.dat"
    path = "/files/apnea-ecg/1.0.0/a02.dat"
    state.cut_once[path] = 1000
    digest = hashlib.sha256((state.root / "apnea-ecg/1.0.0/a02.dat").read_bytes()).hexdigest()
    with pytest.raises(DataError, match="failed after 1 tries"):
        download_file(url, tmp_path / "a02.dat", digest, retries=0, progress=False)
    assert (tmp_path / "a02.dat.part").stat().st_size == 1000
