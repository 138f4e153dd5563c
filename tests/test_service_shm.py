"""Input bytes through reusable shared memory: segments are reused, sized, bounded and never leaked."""

import os

import pytest

from mmprep.service import shm
from mmprep.service.shm import PARALLEL_COPY_BYTES, Arena, Attached, Mapped


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if not n.startswith("sem.")} if os.path.isdir("/dev/shm") else set()


def test_a_segment_is_reused_and_read_back_at_the_size_sent():
    arena, worker = Arena(), Attached()
    a = arena.put(b"x" * 3000)
    assert worker.read(a) == b"x" * 3000
    arena.give_back(a)
    b = arena.put(b"shorter")  # the same segment, a shorter payload: only its own bytes come back
    assert b.name == a.name and worker.read(b) == b"shorter"
    arena.give_back(b)
    assert arena.segments() == 1
    arena.trim()
    assert arena.segments() == 0


@pytest.mark.parametrize("size", [PARALLEL_COPY_BYTES - 1, PARALLEL_COPY_BYTES, 6_180_177, (8 << 20) - 3])
@pytest.mark.parametrize("slices", [1, 4])
def test_large_inputs_copied_in_slices_arrive_whole(size, slices, monkeypatch):
    """Inputs from ``PARALLEL_COPY_BYTES`` on are copied in ``COPY_SLICES`` slices on several threads: every byte
    lands in place, whatever the remainder of the last slice (a memoryview source too)."""
    monkeypatch.setattr(shm, "COPY_SLICES", slices)  # this machine's own choice may be 1
    payload = os.urandom(size)
    arena, worker = Arena(), Attached()
    for src in (payload, memoryview(payload)):
        ref = arena.put(src)
        assert ref.size == size and worker.read(ref) == payload
        arena.give_back(ref)
    arena.trim()


def test_a_view_reads_the_segment_in_place_and_lives_through_evictions():
    arena, worker = Arena(), Attached(keep=1)
    a = arena.put(b"abc" * 1000)
    with worker.view(a) as v:
        assert len(v) == 3000 and bytes(v[:3]) == b"abc"
        caller = Mapped(a.name)  # the caller's memory: a byte written there shows in the view (no copy made)
        caller.buf[0] = ord("z")
        caller.close()
        assert v[0] == ord("z")
        others = [arena.put(b"q" * 10) for _ in range(3)]  # more segments than keep=1: the worker unmaps some
        assert [worker.read(r) for r in others] == [b"q" * 10] * 3
        assert bytes(v[1:3]) == b"bc"  # the one in use stays mapped
    with pytest.raises(ValueError, match="released"):  # the view ends with the block
        v[0]
    for r in [a, *others]:
        arena.give_back(r)
    arena.trim()


def test_requests_in_flight_get_their_own_segments():
    arena, worker = Arena(), Attached()
    refs = [arena.put(bytes([i]) * (1 << 20)) for i in range(3)]  # 1 MiB each: the 1 MiB class holds it
    assert len({r.name for r in refs}) == 3
    assert [worker.read(r)[:2] for r in refs] == [bytes([i]) * 2 for i in range(3)]
    for r in refs:
        arena.give_back(r)
    arena.trim()


def test_idle_segments_stay_within_the_budget_and_leave_nothing_behind():
    before = _segments()
    arena = Arena(idle_bytes=1 << 20, max_idle_bytes=2 << 20)
    refs = [arena.put(b"y" * 100) for _ in range(5)]
    for r in refs:
        arena.give_back(r)
    assert arena.segments() == 2  # 2 MiB at most, 1 MiB segments: the other three are unlinked
    big = arena.put(b"z" * ((1 << 20) + 1))  # over 1 MiB: the next power of two
    assert os.path.getsize(f"/dev/shm/{big.name}") == 2 << 20
    arena.give_back(big)
    arena.trim()
    assert _segments() == before


def test_a_steady_load_reuses_as_many_segments_as_it_had_lent_at_once():
    """Eight requests in flight at a time, again and again: after the first round no segment is made (each new one
    faults in every page, ~8 CPU-ms per 6 MB), though eight exceed the floor of idle bytes."""
    before = _segments()
    arena = Arena(idle_bytes=2 << 20)
    for _ in range(4):
        refs = [arena.put(b"w" * 1000) for _ in range(8)]
        for r in refs:
            arena.give_back(r)
    assert arena.created == 8 and arena.segments() == 8
    arena.trim()
    assert arena.segments() == 0 and _segments() == before
    refs = [arena.put(b"w") for _ in range(3)]  # trimmed: the peak starts again (3 > the 2 MiB floor's 2)
    for r in refs:
        arena.give_back(r)
    assert arena.segments() == 3 and arena.created == 11
    arena.trim()
    assert _segments() == before


def test_small_cpu_results_travel_by_value():
    """grid_thw and other small CPU results go by value: no shared-memory segment or descriptor per tensor."""
    import torch

    from mmprep.service.pool import _import
    from mmprep.service.worker import _export

    before = _segments()
    for t in (torch.tensor([[4, 40, 72]]), torch.zeros(0, 3, dtype=torch.long), torch.randn(5, 7).to(torch.bfloat16)):
        sent = _export(t, lease_timeout=1.0)
        assert sent[0] == "bytes" and not t.is_shared()
        back = _import(sent)
        assert back.dtype == t.dtype and torch.equal(back, t)
    big = torch.zeros(1 << 17, dtype=torch.uint8)  # 128 KiB: shared memory, not a copy in the message
    assert _export(big, lease_timeout=1.0)[0] == "cpu" and big.is_shared()
    assert _segments() == before  # torch's shared CPU tensors use unlinked segments
