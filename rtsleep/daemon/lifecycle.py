"""``rtsleep serve``: startup, the scoring loop and shutdown of the daemon.

Startup (any failure raises :class:`StartupError` with a one-line message; the CLI prints it and
exits 1): logging, model (+ its preprocess spec and id), publisher (bind, CURVE), per bed the
saved state (restored when recent and from the same model) and its LSL ingest (streams open in
the background, so a missing stream never blocks startup), then ``READY=1`` to systemd.

Loop (single thread, owns the ZeroMQ socket): poll every bed's ingest (non-blocking) -> score the
oldest ready epoch of every bed in one batch (a backlog waits for the next rounds) -> persist
every bed that advanced (atomic, write-ahead) -> publish stage and alert messages -> heartbeat on
``status/``
every ``heartbeat_s`` -> watchdog -> answer late joiners from the last-value cache -> sleep
``poll_s`` when idle. An exception while handling one bed's epochs is logged and that bed's epochs
are reported unscorable; the daemon and the other beds keep going. Once a second the loop takes
the ``rtsleep new-recording`` requests (files in the state directory): such a bed publishes what
waits in its output delay, then its model context and its alert trackers start afresh (a request
found at startup: the saved state is not restored).

Shutdown (uvicorn style): SIGTERM/SIGINT only set a flag; the loop finishes the round it is in
(the current epoch is scored, persisted and published), persists every bed again, publishes a
``stopping`` heartbeat, sends ``STOPPING=1`` and returns 0.

Latency (``latency_ms``) runs from the start of the poll that found the epoch complete to the
publish call (a backlog wait included); the time a last sample waited in the LSL queue before that
poll (< ``poll_s``) is not included. Epochs still in the backlog at shutdown are not scored; after a
restart their indices are published as unscorable (no gap, no duplicate).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Collection
from pathlib import Path
from types import FrameType
from typing import Any

import pylsl
import torch

from rtsleep.daemon import sdnotify
from rtsleep.daemon.alerts import AlertThresholds, BedAlerts
from rtsleep.daemon.config import AUTO_DERIVATION, BedConfig, Config
from rtsleep.daemon.ecg_apnea import BedEcgApnea
from rtsleep.daemon.epocher import EpochBlock, default_modality
from rtsleep.daemon.ingest import BedIngest
from rtsleep.daemon.inlet import ChannelSpec, StreamLayout, StreamSelector
from rtsleep.daemon.messages import STATUS_TOPIC, alert_topic, stage_topic, status_message
from rtsleep.daemon.publisher import Publisher, PublisherError
from rtsleep.daemon.respiration import BedRespiration
from rtsleep.daemon.scorer import (
    EpochResult,
    Scorer,
    load_scoring_model,
    result_message,
    trained_heads,
)
from rtsleep.daemon.state import load_state, save_state, take_new_recording
from rtsleep.data.recording import EPOCH_S, Modality
from rtsleep.models.ensemble import SleepNetEnsemble

log = logging.getLogger(__name__)

LOCK_FILE = "serve.lock"
"""In the state directory: held by the running daemon, holds its pid."""


def serving_pid(state_dir: Path) -> str | None:
    """The pid of the ``rtsleep serve`` holding ``state_dir``'s lock, or None when none does."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _lock_holder(fd)
    finally:
        os.close(fd)  # also drops the probe's own lock
    return None


def _lock_holder(fd: int) -> str:
    """The pid written into the held lock file ``fd`` ("?" when it is empty)."""
    return os.read(fd, 32).decode(errors="replace").strip() or "?"

NEW_RECORDING_CHECK_S = 1.0
"""How often the loop looks for ``rtsleep new-recording`` requests, s."""

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class StartupError(RuntimeError):
    """The daemon cannot start; the message is one line naming what failed."""


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald reads the syslog priority and adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record).replace("\n", " | ")
        return f"<{prio}>{record.name}: {text}"


def setup_logging(fmt: str, verbose: bool = False) -> None:
    """Route logs to stderr, ``text`` (with time) or ``journal`` (syslog priority prefixes)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def modality_resolver(bed: BedConfig) -> Any:
    """Channel -> modality for one bed: the config's label map first, then the stream metadata
    and the alias table (``epocher.default_modality``)."""
    overrides = dict(bed.channels)

    def resolve(spec: ChannelSpec, layout: StreamLayout) -> Modality:
        if spec.label in overrides:
            return overrides[spec.label]
        return default_modality(spec, layout)

    return resolve


def selectors(bed: BedConfig) -> list[StreamSelector]:
    """The bed's LSL selectors (empty strings mean "any")."""
    return [StreamSelector(name=s.name or None, type=s.type or None,
                           source_id=s.source_id or None) for s in bed.streams]


class Daemon:
    """The running service; :meth:`start` then :meth:`run` (see the module docstring)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop_requested = False
        self.scorer: Scorer | None = None
        self.publisher: Publisher | None = None
        self._lock_fd: int | None = None
        self.ingests: dict[str, BedIngest] = {}
        self.alerts: dict[str, BedAlerts] = {}
        self.respiration: dict[str, BedRespiration] = {}
        self.ecg: dict[str, BedEcgApnea] = {}
        #: Per bed, epochs cut but not scored yet, with the time they became complete.
        self.backlog: dict[str, deque[tuple[EpochBlock, float]]] = {}
        self.model_id = ""
        self.thresholds: AlertThresholds | None = None
        self.ecg_model: Any = None
        self.t_start = time.monotonic()
        self.utc_offset = time.time() - pylsl.local_clock()

    # ------------------------------------------------------------------ signals
    def request_stop(self, signum: int, frame: FrameType | None = None) -> None:
        """Signal handler: only sets the flag (the loop finishes the current round)."""
        if not self.stop_requested:
            log.info("signal %d: finishing the current epoch, then stopping", signum)
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # ------------------------------------------------------------------ startup
    def start(self) -> None:
        """Load the model, bind the publisher, restore states, open the beds' streams."""
        cfg = self.cfg
        if cfg.model.threads:
            # one thread per process avoids oversubscription (measured: p50 latency 28 ms with
            # 1 thread vs 120 ms with torch's default on 2 busy cores)
            torch.set_num_threads(cfg.model.threads)
        try:
            model, spec, model_id, device = load_scoring_model(cfg.model.path, cfg.model.device)
        except (OSError, ValueError, KeyError) as err:
            raise StartupError(f"model: {err}") from None
        self.model_id = model_id
        heads = trained_heads(cfg.model.path)
        self.scorer = Scorer(model, spec, model_id, device=device, max_batch=cfg.model.max_batch,
                             heads=heads, context_reset_s=cfg.daemon.context_reset_s)
        members = int(getattr(model, "n_members", 1))
        kind = f"ensemble of {members}" if members > 1 else "single model"
        if isinstance(model, SleepNetEnsemble) and model.grouped:
            kind += " in derivation groups " + ", ".join(model.group_names)
        log.info("model %s on %s (trained heads: %s; %s; output delay %d epoch(s))",
                 model_id[:12], device, ", ".join(sorted(heads)), kind, self.scorer.delay)
        try:
            cfg.daemon.state_dir.mkdir(parents=True, exist_ok=True)
            probe = cfg.daemon.state_dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StartupError(f"{cfg.daemon.state_dir}: state directory not writable: "
                               f"{err.strerror or err}") from None
        self._lock_state_dir(cfg.daemon.state_dir)
        try:
            self.publisher = Publisher(
                cfg.zmq.endpoints, sndhwm=cfg.zmq.sndhwm,
                curve_secret_key=cfg.zmq.curve_secret_key or None,
                curve_allow_dir=cfg.zmq.curve_allow_dir or None,
            )
        except PublisherError as err:
            raise StartupError(str(err)) from None
        self.thresholds = AlertThresholds(cfg.alerts.apnea_prob, cfg.alerts.hypopnea_prob,
                                          cfg.alerts.gate_wake)
        if cfg.alerts.ecg:
            from rtsleep.apnea.ecg_model import load_ecg_model

            try:
                self.ecg_model = load_ecg_model()
            except (OSError, ValueError) as err:
                raise StartupError(f"alerts.ecg: {err}") from None
        for bed in cfg.beds:
            if take_new_recording(cfg.daemon.state_dir, bed.id):
                log.info("bed %s: a new recording was requested; the saved state is not "
                         "restored", bed.id)
                saved = None
            else:
                saved = load_state(cfg.daemon.state_dir, bed.id, model_id,
                                   cfg.daemon.state_max_age_s)
            derivation = None if bed.eeg_derivation == AUTO_DERIVATION else bed.eeg_derivation
            try:
                self.scorer.add_bed(bed.id, saved, derivation)
            except ValueError as err:
                log.warning("%s; bed %s starts fresh", err, bed.id)
                saved = None
                self.scorer.add_bed(bed.id, None, derivation)
            self._new_trackers(bed.id)
            if saved is not None:
                self.alerts[bed.id].load_state_dict(saved.extra.get("alerts", {}))
            self.ingests[bed.id] = BedIngest(
                bed.id, selectors(bed),
                anchor=self.scorer.anchor(bed.id),
                next_index=self.scorer.next_epoch(bed.id),
                timeout_s=cfg.daemon.epoch_timeout_s,
                modality_of=modality_resolver(bed),
                inlet_buffer_s=cfg.daemon.inlet_buffer_s,
                inlet_buffer_mb=cfg.daemon.inlet_buffer_mb,
            )
        log.info("serving %d bed(s) on %s", len(cfg.beds), ", ".join(self.publisher.endpoints))

    def _new_trackers(self, bed: str) -> None:
        """Fresh alert trackers (model, AASM, ECG, as configured) for ``bed``."""
        if self.thresholds is None:
            raise RuntimeError("alert trackers before start()")
        self.alerts[bed] = BedAlerts(bed, self.thresholds, self.model_id)
        if self.cfg.alerts.aasm:
            self.respiration[bed] = BedRespiration(bed, self.cfg.alerts.hypopnea_rule,
                                                   self.model_id, self.thresholds.min_sleep_s)
        if self.ecg_model is not None:
            self.ecg[bed] = BedEcgApnea(bed, self.ecg_model, self.thresholds, self.model_id)

    # ------------------------------------------------------------------ loop
    def check_new_recordings(self) -> list[str]:
        """Take the ``rtsleep new-recording`` requests (module doc); returns the beds reset."""
        scorer = self.scorer
        if scorer is None:
            raise RuntimeError("Daemon.check_new_recordings() before start()")
        reset = []
        for bed in self.ingests:
            if not take_new_recording(self.cfg.daemon.state_dir, bed):
                continue
            try:
                # the waiting results belong to the previous sleeper: published as such
                self._publish_and_persist(scorer.new_recording(bed), {bed})
            except Exception:  # noqa: BLE001 - one bed never stops the others
                log.exception("bed %s: releasing the output delay line failed", bed)
            self._new_trackers(bed)
            self._persist(bed)
            reset.append(bed)
        return reset

    def _persist(self, bed: str) -> None:
        if self.scorer is None:
            return
        st = self.scorer.bed_state(bed)
        st.extra["alerts"] = self.alerts[bed].state_dict()
        try:
            save_state(self.cfg.daemon.state_dir, st)
        except OSError as err:
            log.error("bed %s: cannot save state to %s: %s", bed, self.cfg.daemon.state_dir, err)

    def _alerts(self, res: EpochResult) -> list[dict[str, Any]]:
        """Advance the bed's alert trackers with one scored epoch; the alerts it raises."""
        if self.scorer is None:
            return []
        alerts = self.alerts[res.bed].update(res, self.utc_offset)
        resp = self.respiration.get(res.bed)
        if resp is not None:
            alerts += resp.on_result(res, self.scorer.anchor(res.bed), self.utc_offset)
        ecg = self.ecg.get(res.bed)
        if ecg is not None:
            alerts += ecg.on_result(res, self.utc_offset)
        return alerts

    def _publish_and_persist(self, results: list[EpochResult],
                             advanced: Collection[str] = ()) -> None:
        """Write-ahead: every advanced bed (with results, or in ``advanced``: it consumed epochs
        whose results wait in the output delay line) is persisted *before* its messages are sent.

        A SIGKILL during the (fsync'd) save then republishes nothing after the restart; only a
        kill inside the non-blocking sends that follow can lose one epoch's messages on the wire.
        """
        alerts = [self._alerts(res) for res in results]
        for bed_id in sorted({r.bed for r in results} | set(advanced)):
            self._persist(bed_id)
        pub = self.publisher
        if pub is None:
            return
        for res, bed_alerts in zip(results, alerts, strict=True):
            latency_ms = (time.perf_counter() - res.ready_at) * 1000.0
            pub.publish(stage_topic(res.bed),
                        result_message(res, self.model_id, self.utc_offset, latency_ms))
            for alert in bed_alerts:
                pub.publish(alert_topic(res.bed), alert)

    def _respiration(self, blocks: list[EpochBlock]) -> None:
        """Feed the AASM detectors and ECG apnea streams (before scoring); publish what the
        detectors decide."""
        for blk in blocks:
            ecg = self.ecg.get(blk.bed)
            if ecg is not None:
                try:
                    ecg.on_block(blk)
                except Exception:  # noqa: BLE001 - the alert pathway never stops scoring
                    log.exception("bed %s epoch %d: ECG apnea stream failed; disabled",
                                  blk.bed, blk.index)
                    del self.ecg[blk.bed]
            resp = self.respiration.get(blk.bed)
            if resp is None or self.publisher is None:
                continue
            anchor = blk.start_lsl - blk.index * EPOCH_S
            try:
                alerts = resp.on_block(blk, anchor, self.utc_offset)
            except Exception:  # noqa: BLE001 - the alert pathway never stops scoring
                log.exception("bed %s epoch %d: respiratory detector failed; disabled",
                              blk.bed, blk.index)
                del self.respiration[blk.bed]
                continue
            for alert in alerts:
                self.publisher.publish(alert_topic(blk.bed), alert)

    def heartbeat(self, state: str = "running") -> None:
        """Publish one ``status/`` message."""
        if self.publisher is None or self.scorer is None:
            return
        beds: dict[str, dict[str, Any]] = {}
        for bed_id, ingest in self.ingests.items():
            nxt = self.scorer.next_epoch(bed_id)
            scored, unscorable = self.scorer.counters(bed_id)
            resp = self.respiration.get(bed_id)
            ecg = self.ecg.get(bed_id)
            if resp is not None and resp.active:  # airflow: AASM events
                summary = resp.summary()
            elif ecg is not None and ecg.active:
                summary = ecg.summary()
            else:
                summary = self.alerts[bed_id].summary()
            beds[bed_id] = {
                "last_epoch": nxt - 1 if nxt > 0 else None,
                # streams that delivered samples within epoch_timeout_s (not merely opened)
                "streams_connected": ingest.n_delivering(self.cfg.daemon.epoch_timeout_s),
                "streams_open": ingest.n_open(),
                "streams_total": len(ingest.streams),
                "epochs_scored": scored,
                "epochs_unscorable": unscorable,
                "ahi": summary["ahi"],
                "severity": summary["severity"],
            }
        self.publisher.publish(STATUS_TOPIC, status_message(
            state=state, uptime_s=time.monotonic() - self.t_start, model_id=self.model_id,
            beds=beds, now_utc=time.time()))

    def step(self) -> int:
        """One loop round; returns the number of epochs published.

        Polls every bed, then scores at most one epoch per bed (one batch): with a backlog (a
        replay faster than real time, a slow round) the rest waits in a per-bed queue, so the
        streams keep being pulled between batches and a stream that is merely behind is never
        timed out as missing by the epocher.
        """
        scorer = self.scorer
        if scorer is None:
            raise RuntimeError("Daemon.step() before start()")
        t_poll = time.perf_counter()
        for bed_id, ingest in self.ingests.items():
            try:
                ready = ingest.poll()
            except Exception:  # noqa: BLE001 - one bed never stops the others
                log.exception("bed %s: ingest failed this round", bed_id)
                continue
            self.backlog.setdefault(bed_id, deque()).extend((b, t_poll) for b in ready)
        picked = [q.popleft() for q in self.backlog.values() if q]
        if not picked:
            return 0
        blocks = [b for b, _ in picked]
        self._respiration(blocks)
        try:
            results = scorer.score(blocks, [t for _, t in picked])
        except Exception as err:  # noqa: BLE001 - a bug must not take the other beds down
            log.exception("scoring failed for %d epoch(s)", len(blocks))
            results = []
            for blk, t in picked:
                results.extend(scorer.fail(blk, f"scoring error: {err}", t))
        self._publish_and_persist(results, {b.bed for b in blocks})
        return len(results)

    def run(self) -> int:
        """Serve until a stop is requested; returns the exit code (0)."""
        if self.publisher is None:
            raise RuntimeError("Daemon.run() before start()")
        cfg = self.cfg.daemon
        wd = sdnotify.watchdog_interval_s()
        sdnotify.notify(f"READY=1\nSTATUS=scoring {len(self.ingests)} bed(s)")
        next_beat = time.monotonic()
        next_wd = time.monotonic()
        next_check = time.monotonic()
        while not self.stop_requested:
            n = self.step()
            now = time.monotonic()
            if now >= next_check:
                self.check_new_recordings()
                next_check = now + NEW_RECORDING_CHECK_S
            if now >= next_beat:
                self.utc_offset = time.time() - pylsl.local_clock()
                self.heartbeat()
                next_beat = now + cfg.heartbeat_s
            if wd is not None and now >= next_wd:
                sdnotify.notify("WATCHDOG=1")
                next_wd = now + wd
            busy = n or any(self.backlog.values())  # an output delay publishes nothing at first
            self.publisher.poll(0.0 if busy else cfg.poll_s)
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Publish what waits in the output delay line (the epochs after the last one are
        missing), persist every bed, say goodbye on ``status/``, close streams and sockets."""
        sdnotify.notify("STOPPING=1")
        if self.scorer is not None:
            try:
                self._publish_and_persist(self.scorer.flush())
            except Exception:  # noqa: BLE001 - best effort on the way out; the line persists
                log.exception("flushing the output delay line failed")
            for bed in self.scorer.beds:
                self._persist(bed)
        try:
            self.heartbeat("stopping")
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.exception("final heartbeat failed")
        self.close(linger_s=1.0)
        log.info("stopped")

    def _lock_state_dir(self, state_dir: Path) -> None:
        """Hold ``<state_dir>/serve.lock`` (an exclusive ``flock``, released when the process
        ends, even by SIGKILL) so that a second daemon on the same beds' state files refuses to
        start instead of restoring and overwriting them (a ZMQ ``ipc://`` endpoint or another
        port would not stop it)."""
        path = state_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = _lock_holder(fd)
            os.close(fd)
            raise StartupError(f"{state_dir}: another rtsleep serve is using this state "
                               f"directory (pid {other})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self, linger_s: float = 0.0) -> None:
        """Close streams and sockets without persisting (a failed startup uses this directly);
        ``linger_s`` bounds the wait for queued messages to go out."""
        for ingest in self.ingests.values():
            ingest.close()
        if self.publisher is not None:
            self.publisher.close(linger_s)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the state directory
            self._lock_fd = None


def serve(cfg: Config, verbose: bool = False) -> int:
    """Run the daemon with ``cfg`` until SIGTERM/SIGINT; returns the exit code.

    Raises :class:`StartupError` when startup fails (the CLI turns it into exit code 1).
    """
    setup_logging(cfg.daemon.log_format, verbose)
    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except BaseException:
        daemon.close()
        raise
    if daemon.stop_requested:
        daemon.shutdown()
        code = 0
    else:
        code = daemon.run()
    ignore_late_signals()
    return code


def ignore_late_signals() -> None:
    """After shutdown only the interpreter's teardown is left (about a second). A late SIGTERM or
    SIGINT (an impatient second Ctrl-C) must not turn exit 0 into death by signal: the
    interpreter puts Python handlers back to the default as it finalizes, but keeps SIG_IGN."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

