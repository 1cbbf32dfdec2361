"""Publisher: topics, strict JSON, schema-valid messages, last-value cache, CURVE, slow clients."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zmq
import zmq.auth

from rtsleep.daemon.messages import (
    STATUS_TOPIC,
    ChannelQuality,
    alert_message,
    alert_topic,
    decode,
    stage_message,
    stage_topic,
    status_message,
)
from rtsleep.daemon.publisher import Publisher, PublisherError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "rtsleep" / "schemas" / "messages.schema.json"
RECV_MS = 3000


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


def make_stage(bed: str = "bed1", epoch: int = 0, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        bed=bed, epoch=epoch, start_lsl=100.0 + 30 * epoch, end_lsl=130.0 + 30 * epoch,
        start_utc=1.7e9, end_utc=1.7e9 + 30, probs=[0.1, 0.1, 0.6, 0.1, 0.1],
        apnea_prob=0.2, hypopnea_prob=0.3,
        quality={"C3-A1": ChannelQuality("EEG", 1.0, [])}, model_id="m1", latency_ms=3.5,
    )
    args.update(kw)
    return stage_message(**args)


def sub(ctx: zmq.Context[Any], endpoint: str, topic: str = "", **opts: Any) -> zmq.Socket[Any]:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, RECV_MS)
    for k, v in opts.items():
        setattr(s, k, v)
    s.connect(endpoint)
    s.setsockopt_string(zmq.SUBSCRIBE, topic)
    return s


def wait_subscribed(pub: Publisher, n: int = 1) -> None:
    got = 0
    deadline = time.monotonic() + RECV_MS / 1000
    while got < n and time.monotonic() < deadline:
        got += pub.poll(0.05)
    assert got >= n, "subscription never arrived"


def test_messages_validate_against_schema_and_nan_becomes_null(
    validator: jsonschema.protocols.Validator, ctx: zmq.Context[Any]
) -> None:
    with Publisher(["tcp://127.0.0.1:0"], context=ctx) as pub:
        s = sub(ctx, pub.endpoints[0])
        wait_subscribed(pub)
        sent = [
            pub.publish(stage_topic("bed1"), make_stage(apnea_prob=math.nan)),
            pub.publish(stage_topic("bed1"), make_stage(epoch=1, probs=None,
                                                        reason="EEG: missing", latency_ms=None,
                                                        start_utc=None)),
            pub.publish(alert_topic("bed1"), alert_message(
                bed="bed1", epoch=1, event="apnea", state="provisional", onset_lsl=130.0,
                duration_s=None, source="model", probability=0.9, model_id="m1")),
            pub.publish(STATUS_TOPIC, status_message(
                state="running", uptime_s=1.0, model_id="m1", now_utc=1.7e9,
                beds={"bed1": {"last_epoch": 1, "streams_connected": 1, "streams_open": 1,
                               "streams_total": 1, "epochs_scored": 1, "epochs_unscorable": 1,
                               "ahi": math.inf, "severity": None}})),
        ]
        got = [s.recv_multipart() for _ in sent]
    topics = [t.decode() for t, _ in got]
    assert topics == ["stage/bed1/", "stage/bed1/", "alert/bed1/", "status/"]
    msgs = [decode(p) for _, p in got]
    for m in msgs:
        validator.validate(m)
        json.dumps(m, allow_nan=False)
    assert [m["seq"] for m in msgs] == [0, 1, 2, 3]
    assert msgs[0]["apnea_prob"] is None and msgs[0]["stage"] == "N2"
    assert msgs[1]["status"] == "unscorable" and msgs[1]["stage"] is None
    assert msgs[3]["beds"]["bed1"]["ahi"] is None
    assert sent[0]["seq"] == 0


def test_schema_rejects_malformed_stage_message(validator: jsonschema.protocols.Validator) -> None:
    msg = make_stage() | {"seq": 0, "run": "x"}
    validator.validate(msg)
    bad = dict(msg, stage="S4")
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)
    extra = dict(msg, colour="red")
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(extra)


def test_topic_prefix_does_not_match_longer_bed_ids(ctx: zmq.Context[Any]) -> None:
    with Publisher(["tcp://127.0.0.1:0"], context=ctx) as pub:
        s = sub(ctx, pub.endpoints[0], stage_topic("bed1"))
        wait_subscribed(pub)
        pub.publish(stage_topic("bed10"), make_stage(bed="bed10"))
        pub.publish(stage_topic("bed1"), make_stage(bed="bed1"))
        topic, payload = s.recv_multipart()
    assert topic == b"stage/bed1/" and decode(payload)["bed"] == "bed1"


def test_late_joiner_gets_last_value_per_topic_at_once(ctx: zmq.Context[Any]) -> None:
    with Publisher(["tcp://127.0.0.1:0"], context=ctx) as pub:
        for epoch in range(5):
            pub.publish(stage_topic("bed1"), make_stage(epoch=epoch))
        pub.publish(stage_topic("bed2"), make_stage(bed="bed2", epoch=7))
        late = sub(ctx, pub.endpoints[0], "stage/")
        wait_subscribed(pub)
        got = sorted((decode(late.recv_multipart()[1]) for _ in range(2)),
                     key=lambda m: m["bed"])
    assert [(m["bed"], m["epoch"]) for m in got] == [("bed1", 4), ("bed2", 7)]


def test_slow_subscriber_does_not_block_publishing_or_others(ctx: zmq.Context[Any]) -> None:
    pad = "x" * 65536
    n = 300
    with Publisher(["tcp://127.0.0.1:0"], sndhwm=20, context=ctx) as pub:
        slow = sub(ctx, pub.endpoints[0], rcvhwm=1, rcvbuf=65536)
        fast = sub(ctx, pub.endpoints[0])
        wait_subscribed(pub, 2)
        received = []
        for i in range(n):
            pub.publish(STATUS_TOPIC, {"schema": "test", "i": i, "pad": pad})
            received.append(decode(fast.recv_multipart()[1])["i"])
        slow.setsockopt(zmq.RCVTIMEO, 200)
        slow_got = 0
        try:
            while True:
                slow.recv_multipart()
                slow_got += 1
        except zmq.Again:
            pass
    assert received == list(range(n))  # the fast one missed nothing
    assert slow_got < n  # the slow one's queue overflowed: dropped, not waited for


def _certs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    keys = tmp_path / "keys"
    allow = tmp_path / "allow"
    keys.mkdir()
    allow.mkdir()
    _, server_secret = zmq.auth.create_certificates(keys, "server")
    good_pub, good_secret = zmq.auth.create_certificates(keys, "good")
    _, bad_secret = zmq.auth.create_certificates(keys, "bad")
    shutil.copy(good_pub, allow / "good.key")
    return Path(server_secret), Path(good_secret), Path(bad_secret), allow


def _curve_sub(ctx: zmq.Context[Any], endpoint: str, client_secret: Path,
               server_public: bytes) -> zmq.Socket[Any]:
    public, secret = zmq.auth.load_certificate(client_secret)
    return sub(ctx, endpoint, curve_publickey=public, curve_secretkey=secret,
               curve_serverkey=server_public)


def test_curve_unauthorised_client_receives_nothing(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    server_secret, good_secret, bad_secret, allow = _certs(tmp_path)
    server_public, _ = zmq.auth.load_certificate(server_secret)
    with Publisher(["tcp://127.0.0.1:0"], curve_secret_key=server_secret,
                   curve_allow_dir=allow, context=ctx) as pub:
        good = _curve_sub(ctx, pub.endpoints[0], good_secret, server_public)
        bad = _curve_sub(ctx, pub.endpoints[0], bad_secret, server_public)
        plain = sub(ctx, pub.endpoints[0])
        wait_subscribed(pub, 1)
        pub.poll(0.3)  # let any (wrongly) accepted peer subscribe too
        for epoch in range(3):
            pub.publish(stage_topic("bed1"), make_stage(epoch=epoch))
        got = [decode(good.recv_multipart()[1])["epoch"] for _ in range(3)]
        for s in (bad, plain):
            s.setsockopt(zmq.RCVTIMEO, 500)
            with pytest.raises(zmq.Again):
                s.recv_multipart()
    assert got == [0, 1, 2]


def test_curve_misconfiguration_fails_with_the_path(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    with pytest.raises(PublisherError, match="secret key file not found"):
        Publisher(["tcp://127.0.0.1:0"], curve_secret_key=tmp_path / "nope",
                  curve_allow_dir=tmp_path, context=ctx)
    server_secret, _, _, _ = _certs(tmp_path)
    public_only = server_secret.with_suffix(".key")
    with pytest.raises(PublisherError, match="no secret key"):
        Publisher(["tcp://127.0.0.1:0"], curve_secret_key=public_only,
                  curve_allow_dir=tmp_path, context=ctx)


def test_bind_failure_names_the_endpoint(ctx: zmq.Context[Any]) -> None:
    with Publisher(["tcp://127.0.0.1:0"], context=ctx) as pub:
        with pytest.raises(PublisherError, match=r"tcp://127\.0\.0\.1:\d+: cannot bind"):
            Publisher([pub.endpoints[0]], context=ctx)
