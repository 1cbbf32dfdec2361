"""ZeroMQ publisher: XPUB with a last-value cache, optional CURVE, never blocking the scorer.

- ``XPUB_VERBOSE`` makes every subscription visible, so :meth:`Publisher.poll` can resend the
  cached last message of every topic the new subscription matches (a dashboard joining mid-night
  gets the current stage at once). The resend reaches every matching subscriber; clients drop
  repeats by ``(run, seq)``.
- ``SNDHWM`` bounds the queue per subscriber and sends are non-blocking: a slow or dead subscriber
  loses messages, the scoring loop never waits.
- CURVE (optional): the server's secret key file and a directory of authorised client public keys
  (``zmq.auth`` certificate files), enforced by a ``ThreadAuthenticator``. An unlisted client is
  refused at the handshake and receives nothing.

One thread owns the socket (the scoring loop): call :meth:`poll` from it regularly.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from rtsleep.daemon.messages import encode

log = logging.getLogger(__name__)


class PublisherError(RuntimeError):
    """The publisher could not start: ``"<endpoint or key file>: <problem>"``."""


class Publisher:
    """Binds an XPUB socket to ``endpoints`` and publishes ``(topic, JSON)`` messages.

    ``curve_secret_key``: path of the server's secret certificate (``zmq.auth.create_certificates``
    output); ``curve_allow_dir``: directory of authorised client public certificates.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        sndhwm: int = 1000,
        curve_secret_key: str | Path | None = None,
        curve_allow_dir: str | Path | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self._ctx: zmq.Context[Any] = context or zmq.Context.instance()
        self._auth: ThreadAuthenticator | None = None
        self._cache: dict[bytes, bytes] = {}
        self.seq = 0
        self.run = secrets.token_hex(6)
        self.n_dropped = 0
        self.n_subscriptions = 0
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, int(sndhwm))
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        try:
            if curve_secret_key:
                self._setup_curve(sock, Path(curve_secret_key), Path(curve_allow_dir or ""))
            for ep in endpoints:
                try:
                    sock.bind(ep)
                except zmq.ZMQError as err:
                    raise PublisherError(f"{ep}: cannot bind: {err}") from None
        except Exception:
            sock.close(0)
            self._stop_auth()
            raise
        self._sock = sock
        self.endpoints = [sock.getsockopt_string(zmq.LAST_ENDPOINT)] if len(endpoints) == 1 \
            else list(endpoints)

    def _setup_curve(self, sock: zmq.Socket[Any], secret_file: Path, allow_dir: Path) -> None:
        if not secret_file.is_file():
            raise PublisherError(f"{secret_file}: CURVE secret key file not found")
        if not allow_dir.is_dir():
            raise PublisherError(f"{allow_dir}: CURVE allow-list directory not found")
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as err:
            raise PublisherError(f"{secret_file}: not a CURVE certificate: {err}") from None
        if secret is None:
            raise PublisherError(f"{secret_file}: holds no secret key (a public certificate?)")
        n_keys = sum(1 for p in allow_dir.iterdir() if p.is_file())
        auth = ThreadAuthenticator(self._ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(allow_dir))
        self._auth = auth
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        log.info("CURVE on: %d client key file(s) allowed from %s", n_keys, allow_dir)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def publish(self, topic: str, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Stamp ``seq``/``run``, encode strictly, cache as the topic's last value, send now.

        Never blocks: when a subscriber's queue is full ZeroMQ drops for that subscriber.
        Returns the message as sent.
        """
        full = dict(msg)
        full["seq"] = self.seq
        full["run"] = self.run
        self.seq += 1
        t = topic.encode("utf-8")
        payload = encode(full)
        self._cache[t] = payload
        self._send(t, payload)
        return full

    def _send(self, topic: bytes, payload: bytes) -> None:
        try:
            self._sock.send_multipart([topic, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.n_dropped += 1

    def poll(self, timeout_s: float = 0.0) -> int:
        """Handle pending (un)subscriptions, resending cached last values; returns how many.

        Waits at most ``timeout_s`` for the first one (0: only what is already there).
        """
        n = 0
        timeout_ms = int(timeout_s * 1000)
        while self._sock.poll(timeout_ms if n == 0 else 0, zmq.POLLIN):
            frame = self._sock.recv()
            n += 1
            if not frame or frame[0] != 1:
                continue  # unsubscribe
            self.n_subscriptions += 1
            prefix = frame[1:]
            for topic, payload in list(self._cache.items()):
                if topic.startswith(prefix):
                    self._send(topic, payload)
        return n

    def close(self, linger_s: float = 0.0) -> None:
        """Close the socket (waiting up to ``linger_s`` to flush queued messages) and stop the
        authenticator (idempotent)."""
        if not self._sock.closed:
            self._sock.close(int(linger_s * 1000))
        self._stop_auth()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
