"""Stream selection and inlets over LSL on loopback: safe predicates, bad and absent streams."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pylsl
import pytest

from rtsleep.daemon.ingest import BedIngest
from rtsleep.daemon.inlet import StreamSelector, resolve
from rtsleep.daemon.replay import Player, PlayerConfig
from rtsleep.data.recording import Channel, Modality


def test_predicate_quotes_every_value_safely() -> None:
    assert StreamSelector(name="EEG", type="EEG").predicate() == "name='EEG' and type='EEG'"
    assert StreamSelector(name="Bob's amp").predicate() == "name=\"Bob's amp\""
    both = StreamSelector(source_id="a'b\"c").predicate()
    assert both == "source_id=concat('a', \"'\", 'b\"c')"
    # an injection attempt stays one literal
    evil = StreamSelector(name="x' or '1'='1").predicate()
    assert evil == "name=\"x' or '1'='1\""


def test_selector_needs_a_field_and_rejects_control_characters() -> None:
    with pytest.raises(ValueError, match="at least one"):
        StreamSelector()
    with pytest.raises(ValueError, match="control characters"):
        StreamSelector(name="a\nb")


def test_a_stream_without_channels_is_a_data_error_naming_it() -> None:
    """So the bed takes the one-line retry path instead of failing inside the ring buffer."""
    from rtsleep.daemon.inlet import StreamLayout
    from rtsleep.data.errors import DataError

    info = pylsl.StreamInfo("amp", "EEG", 0, 100.0, "float32", "amp-zero")
    with pytest.raises(DataError, match="^amp-zero: stream has no channels$"):
        StreamLayout.from_info(info)


def test_resolve_finds_a_stream_whose_name_has_both_quote_kinds() -> None:
    name = f"amp 'A' \"B\" {os.getpid()}"
    outlet = pylsl.StreamOutlet(
        pylsl.StreamInfo(name, "EEG", 1, 100.0, pylsl.cf_float32, f"g1-q-{os.getpid()}")
    )
    found = resolve(StreamSelector(name=name), timeout_s=3.0)
    assert [i.name() for i in found] == [name]
    assert resolve(StreamSelector(name=name + "x"), timeout_s=0.3) == []
    del outlet


def test_absent_and_unusable_streams_never_stop_a_bed(caplog: pytest.LogCaptureFixture) -> None:
    """One good stream, one irregular-rate stream, one that never appears: epochs still flow."""
    uid = f"{os.getpid()}-{time.monotonic_ns()}"
    markers = pylsl.StreamOutlet(
        pylsl.StreamInfo("markers", "Markers", 1, 0.0, pylsl.cf_float32, f"g1-mk-{uid}")
    )
    rng = np.random.default_rng(1)
    eeg = Channel("C3-A2", Modality.EEG, 100.0, "uV", rng.normal(0, 20, 6500).round(2))
    config = PlayerConfig(channels=[eeg], source=f"good-{uid}", speed=None, wait_consumers_s=25.0)
    selectors = [
        StreamSelector(source_id=f"rtsleep-replay:good-{uid}:EEG"),
        StreamSelector(source_id=f"g1-mk-{uid}"),
        StreamSelector(source_id=f"g1-never-{uid}"),
    ]
    ingest = BedIngest("bed1", selectors, timeout_s=1.0)
    player = Player(config)
    blocks = []
    try:
        with caplog.at_level(logging.ERROR, logger="rtsleep.daemon.inlet"):
            player.start(timeout_s=30)
            deadline = time.monotonic() + 25
            while len(blocks) < 2 and time.monotonic() < deadline:
                blocks += ingest.poll()
                time.sleep(0.01)
    finally:
        player.stop()
        ingest.close()
        del markers
    assert [b.index for b in blocks] == [0, 1]
    for b in blocks:
        assert not b.unscorable
        assert set(b.quality.missing_streams) == {f"g1-mk-{uid}", f"g1-never-{uid}"}
        np.testing.assert_array_equal(
            b.channel("C3-A2").data, eeg.data[b.index * 3000 : (b.index + 1) * 3000]
        )
    assert any("irregular rate" in r.getMessage() for r in caplog.records)
