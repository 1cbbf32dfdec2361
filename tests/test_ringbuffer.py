"""Ring buffer: FIFO order across wrap-around, overflow accounting, no reallocation."""

from __future__ import annotations

import numpy as np
import pytest

from rtsleep.daemon.ringbuffer import RingBuffer


def _chunk(start: int, n: int, n_chans: int = 2) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(start, start + n)
    return np.stack([idx * 10 + c for c in range(n_chans)], axis=1).astype(float), idx / 100.0


def test_fifo_order_survives_wrap_around() -> None:
    rb = RingBuffer(12, 2)
    got_x, got_t = [], []
    start = 0
    for n in (3, 4, 2, 5, 1, 6, 3):  # 24 samples through 12 slots: wraps twice
        x, t = _chunk(start, n)
        rb.push(x, t)
        start += n
        px, pt = rb.pop(2)
        got_x.append(px)
        got_t.append(pt)
    px, pt = rb.pop()
    got_x.append(px)
    got_t.append(pt)
    x_all, t_all = _chunk(0, start)
    np.testing.assert_array_equal(np.concatenate(got_x), x_all)
    np.testing.assert_array_equal(np.concatenate(got_t), t_all)
    assert len(rb) == 0
    assert rb.n_dropped == 0
    assert rb.n_pushed == start


def test_push_never_reallocates_the_store() -> None:
    rb = RingBuffer(5, 3)
    data_id, ts_id = id(rb._data), id(rb._ts)
    for k in range(20):
        rb.push(*_chunk(k * 4, 4, 3))
        rb.pop(3)
    assert id(rb._data) == data_id and id(rb._ts) == ts_id


def test_overflow_keeps_newest_and_counts_dropped() -> None:
    rb = RingBuffer(4, 1)
    rb.push(*_chunk(0, 3, 1))
    rb.push(*_chunk(3, 3, 1))  # 6 pushed into 4 slots: 0 and 1 are lost
    x, t = rb.peek()
    np.testing.assert_array_equal(x[:, 0], [20.0, 30.0, 40.0, 50.0])
    assert rb.n_dropped == 2
    rb.push(*_chunk(6, 9, 1))  # a chunk larger than the buffer
    x, t = rb.pop()
    np.testing.assert_array_equal(t, np.arange(11, 15) / 100.0)
    assert rb.n_dropped == 2 + 4 + 5


def test_peek_does_not_consume() -> None:
    rb = RingBuffer(4, 1)
    rb.push(*_chunk(0, 3, 1))
    rb.peek(2)
    assert len(rb) == 3
    x, _ = rb.pop(10)
    assert x.shape == (3, 1)


def test_bad_shapes_are_rejected() -> None:
    rb = RingBuffer(4, 2)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        rb.push(np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="timestamps"):
        rb.push(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0, 2)
