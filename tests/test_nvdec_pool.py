"""The NVDEC session pool's bookkeeping (pure Python: the factory here stands in for decoder creation)."""

from mmprep.decode.nvdec_pool import NvdecPool

KEY = ("h264", 8, "420")


def make_pool(size: int = 2) -> NvdecPool:
    def factory(s):
        s.decoder = object()

    return NvdecPool([0], {0: size}, factory)


def test_helper_session_only_when_one_is_free():
    pool = make_pool(size=2)
    with pool.session(KEY, 640, 360) as first:
        with pool.session(KEY, 640, 360, wait=False) as helper:
            assert first is not None and helper is not None and helper is not first
            with pool.session(KEY, 640, 360, wait=False) as third:
                assert third is None  # the pool is full: no waiting, no session
            assert pool.stats()["busy"] == {0: 2}
    st = pool.stats()
    assert st["busy"] == {0: 0} and st["idle"] == {0: 2} and st["helpers"] == 1 and st["created"] == 2


def test_helper_reuses_an_idle_session_and_a_failed_one_is_dropped():
    pool = make_pool(size=2)
    with pool.session(KEY, 640, 360):
        pass
    try:
        with pool.session(KEY, 640, 360, wait=False) as s:
            assert s is not None
            raise RuntimeError("decode failed")
    except RuntimeError:
        pass
    st = pool.stats()
    assert st["created"] == 1 and st["live"] == {0: 0} and st["idle"] == {0: 0}
