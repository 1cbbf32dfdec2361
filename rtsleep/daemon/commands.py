"""The ``rtsleep serve``, ``check``, ``new-recording`` and ``score`` commands (typer).

Every failure prints one line naming the file, key or stream at fault on stderr and exits 1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from rtsleep.daemon.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Daemon TOML config.")]


def _fail(command: str, message: str) -> typer.Exit:
    typer.echo(f"rtsleep {command}: {message}", err=True)
    return typer.Exit(1)


def _load(command: str, path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        raise _fail(command, str(err)) from None


def check_config(cfg: Config, stream_timeout_s: float = 1.0) -> list[str]:
    """Every problem with ``cfg``: model, state dir, CURVE files, streams; empty when fine.

    Prints nothing; the caller reports. Streams are resolved with a short timeout each.
    """
    import zmq.auth

    from rtsleep.daemon.inlet import resolve
    from rtsleep.daemon.lifecycle import selectors
    from rtsleep.daemon.scorer import load_scoring_model

    problems: list[str] = []
    try:
        load_scoring_model(cfg.model.path, cfg.model.device)
    except (OSError, ValueError, KeyError) as err:
        problems.append(f"model: {err}")
    state_dir = cfg.daemon.state_dir
    probe_dir = state_dir if state_dir.exists() else state_dir.parent
    try:
        probe = probe_dir / ".rtsleep-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        problems.append(f"{state_dir}: state directory not writable: {err.strerror or err}")
    if cfg.zmq.curve_enabled:
        key = Path(cfg.zmq.curve_secret_key)
        try:
            _, secret = zmq.auth.load_certificate(key)
            if secret is None:
                problems.append(f"{key}: holds no CURVE secret key")
        except (OSError, ValueError) as err:
            problems.append(f"{key}: not a CURVE secret certificate: {err}")
        allow = Path(cfg.zmq.curve_allow_dir)
        if not allow.is_dir():
            problems.append(f"{allow}: CURVE allow-list directory not found")
        elif not zmq.auth.load_certificates(allow):
            problems.append(f"{allow}: no client public keys (nobody could subscribe)")
    from rtsleep.daemon.lifecycle import serving_pid

    if serving_pid(state_dir) is None:  # else its endpoints are bound by that daemon
        problems += _unbindable_tcp(cfg.zmq.endpoints)
    for bed in cfg.beds:
        for sel in selectors(bed):
            if not resolve(sel, stream_timeout_s):
                problems.append(f"bed {bed.id}: LSL stream {sel.predicate()} not found")
    return problems


def _unbindable_tcp(endpoints: list[str]) -> list[str]:
    """The ``tcp://`` endpoints a publisher could not bind now (a port taken by a running
    daemon or another program); ``ipc://`` paths libzmq takes over, so only the state-directory
    lock of ``serve`` tells a second daemon there."""
    import zmq

    problems = []
    ctx = zmq.Context()
    try:
        for ep in endpoints:
            if not ep.startswith("tcp://"):
                continue
            sock = ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.bind(ep)
            except zmq.ZMQError as err:
                problems.append(f"zmq: {ep}: cannot bind: {err} (another rtsleep serve or "
                                "program on it?)")
            finally:
                sock.close(0)
    finally:
        ctx.term()
    return problems


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``check``, ``new-recording`` and ``score``."""

    @app.command()
    def serve(config: ConfigOption, verbose: Annotated[bool, typer.Option(
            "--debug", help="Debug logging.")] = False) -> None:
        """Run the scoring daemon until SIGTERM/SIGINT (then exit 0)."""
        cfg = _load("serve", config)  # before the heavy imports: a bad config fails fast
        from rtsleep.daemon.lifecycle import StartupError
        from rtsleep.daemon.lifecycle import serve as run_serve

        try:
            code = run_serve(cfg, verbose=verbose)
        except StartupError as err:
            raise _fail("serve", str(err)) from None
        raise typer.Exit(code)

    @app.command()
    def check(
        config: ConfigOption,
        stream_timeout: Annotated[float, typer.Option(
            help="Seconds to look for each LSL stream.")] = 1.0,
    ) -> None:
        """Validate the config, the model and the streams; exit 1 on any problem."""
        from rtsleep.daemon.lifecycle import serving_pid

        cfg = _load("check", config)
        problems = check_config(cfg, stream_timeout)
        for p in problems:
            typer.echo(f"problem: {p}", err=True)
        if not problems:
            streams = sum(len(b.streams) for b in cfg.beds)
            typer.echo(f"ok: {config}: {len(cfg.beds)} bed(s), {streams} stream(s) found, "
                       "model loads")
        # with problems too: "stream not found" reads differently when the daemon is up, and
        # its endpoints were not test-bound (they are that daemon's)
        pid = serving_pid(cfg.daemon.state_dir)
        if pid is not None:
            typer.echo(f"rtsleep serve is running with this state directory (pid {pid})")
        if problems:
            raise typer.Exit(1)

    @app.command("new-recording")
    def new_recording(
        config: ConfigOption,
        beds: Annotated[list[str], typer.Argument(help="Bed ids from the config.")],
    ) -> None:
        """A new sleeper on these beds: fresh model context and alert trackers.

        The daemon publishes what waits in the output delay, then starts the beds afresh (within
        a second; a stopped daemon at its next start). Run it as the service user (it writes to
        the state dir)."""
        from rtsleep.daemon.state import request_new_recording

        cfg = _load("new-recording", config)
        known = [b.id for b in cfg.beds]
        for bed in beds:
            if bed not in known:
                raise _fail("new-recording", f"{config}: no bed {bed!r} (beds: "
                            f"{', '.join(known)})")
        for bed in beds:
            try:
                path = request_new_recording(cfg.daemon.state_dir, bed)
            except OSError as err:
                raise _fail("new-recording", f"{cfg.daemon.state_dir}: cannot write the "
                            f"request for bed {bed}: {err.strerror or err}") from None
            typer.echo(f"bed {bed}: new recording requested ({path})")

    @app.command()
    def score(
        file: Annotated[Path, typer.Argument(help="Recording (EDF or store .parquet).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output JSON lines file.")],
        png: Annotated[bool, typer.Option(
            help="Also write the hypnogram as a PNG beside --out (its name, .png).")] = False,
        model: Annotated[str, typer.Option(help="Model file (default: bundled).")] = "",
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
        dataset: Annotated[str, typer.Option(help="Reader for EDF files.")] = "edf",
        threads: Annotated[int, typer.Option(
            help="torch CPU threads (0: torch's default); the daemon's default is 1.")] = 1,
    ) -> None:
        """Score a recording offline exactly as the daemon would (same causal code, batch 1)."""
        import torch

        from rtsleep.daemon.score import plot_hypnogram, score_file
        from rtsleep.daemon.scorer import Scorer, load_scoring_model, trained_heads
        from rtsleep.data.errors import DataError

        if threads:
            torch.set_num_threads(threads)

        try:
            net, spec, model_id, dev = load_scoring_model(model, device)
        except (OSError, ValueError, KeyError) as err:
            raise _fail("score", f"model: {err}") from None
        scorer = Scorer(net, spec, model_id, device=dev, max_batch=1, heads=trained_heads(model))
        try:
            messages = score_file(file, out, scorer, dataset=dataset)
        except DataError as err:
            raise _fail("score", str(err)) from None
        n_scored = sum(1 for m in messages if m["status"] == "scored")
        typer.echo(f"{file}: {len(messages)} epochs ({n_scored} scored) -> {out}")
        if messages and not n_scored:  # the file tells why per epoch; a script needs to know
            raise _fail("score", f"{file}: no epoch could be scored (first epoch: "
                                 f"{messages[0].get('reason') or messages[0]['status']})")
        if png:
            expert = None
            try:
                from rtsleep.data.readers import read_recording

                expert = read_recording(dataset, file).stages
            except (DataError, OSError, ValueError) as err:
                log.info("no expert hypnogram for the figure: %s", err)
            png_path = out.with_suffix(".png")
            plot_hypnogram(messages, png_path, title=file.name, expert=expert)
            typer.echo(f"figure -> {png_path}")
