"""The NVDEC path's step driver (``video_nvdec._drive``) and its split setting, without a GPU: parts are plain
generators of steps, as ``_part`` is; the GPU tests run it on real decoders."""

import pytest

from mmprep.config import settings
from mmprep.decode.nvdec_pool import Session
from mmprep.decode.video_nvdec import _drive


def _session() -> Session:
    return Session(gpu=0, key=("h264", 8, "420"), max_width=1920, max_height=1088)  # no decoder: no context to push


def _steps(name: str, n: int, log: list, result: int, fail_at: int | None = None, closed: list | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"{name} broke at step {i}")
            log.append((name, i))
            yield
        return result
    finally:
        if closed is not None:
            closed.append(name)


def test_parts_take_turns_and_their_slots_add_up():
    log: list = []
    filled = _drive(_session(), _steps("a", 4, log, 10), _steps("b", 2, log, 3))
    assert filled == 13
    # one step of each in turn while both run, then the longer one alone
    assert log == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3)]


def test_an_error_in_one_part_closes_the_others_and_propagates():
    log: list = []
    closed: list = []
    with pytest.raises(ValueError, match="b broke at step 1"):
        _drive(_session(), _steps("a", 5, log, 1, closed=closed), _steps("b", 5, log, 1, fail_at=1, closed=closed))
    assert sorted(closed) == ["a", "b"]  # a's parser would be destroyed and its stream waited for
    assert ("a", 2) not in log  # a stopped once b failed


def test_a_single_part_runs_to_its_end():
    log: list = []
    assert _drive(_session(), _steps("a", 3, log, 7)) == 7
    assert [i for _, i in log] == [0, 1, 2]


@pytest.mark.parametrize("raw,mode", [("", "threads"), ("1", "threads"), ("on", "threads"), ("threads", "threads"),
                                      ("interleave", "interleave"), ("0", "off"), ("off", "off"), ("false", "off")])
def test_split_setting_reads_old_and_new_values(monkeypatch, fresh_settings, raw, mode):
    monkeypatch.setenv("MMPREP_NVDEC_SPLIT", raw)
    assert settings().nvdec_split == mode


def test_split_setting_refuses_other_values_by_name(monkeypatch, fresh_settings):
    monkeypatch.setenv("MMPREP_NVDEC_SPLIT", "both")
    with pytest.raises(ValueError, match="MMPREP_NVDEC_SPLIT must be one of .*interleave.*got 'both'"):
        settings()


def test_a_part_whose_cleanup_fails_does_not_keep_the_others_open():
    log: list = []
    closed: list = []

    def bad_cleanup():
        try:
            while True:
                yield
        finally:
            raise RuntimeError("cleanup failed")

    with pytest.raises(ValueError, match="c broke at step 0"):
        _drive(_session(), bad_cleanup(), _steps("d", 3, log, 1, closed=closed), _steps("c", 3, log, 1, fail_at=0))
    assert closed == ["d"]  # closed (its parser destroyed) although the part before it failed to clean up
