"""One media service per host, shared by several processes (CPU workers here; GPU results travel as
``mmprep.ipc`` handles, covered on the GPU machine)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

import mmprep
from mmprep.service import ServiceError
from mmprep.service.host import attach, parse_gpus

from .helpers import clip


@pytest.fixture()
def address(tmp_path):
    path = f"/tmp/mmprep-test-{os.getpid()}-{time.monotonic_ns()}.sock"  # short: Unix socket paths max ~107 bytes
    yield path
    try:
        client = attach(path, start=False)
        os.kill(client.stats()["pid"], signal.SIGTERM)
    except ServiceError:
        pass
    for suffix in ("", ".key", ".lock", ".log"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _other_process(address: str, data: bytes, out) -> None:
    """A second process (think: another vLLM API server): attach, decode, report what it got."""
    client = attach(address, gpus=[], cpu_workers=1)
    v = client.decode_video(data, num_frames=4)
    out.put((client.stats()["pid"], v.frames.numpy(), v.indices))


def test_processes_share_one_host_service(address):
    data = clip("h264", frames=24)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_other_process, args=(address, data, out)) for _ in range(2)]
    for p in procs:  # both may find no service and race to start it: one must win
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ref = mmprep.decode_video(data, num_frames=4, device="cpu")
    assert got[0][0] == got[1][0]  # one service process for both
    for _, frames, indices in got:
        assert indices == ref.indices and torch.equal(torch.from_numpy(frames), ref.frames)
    me = attach(address, start=False)
    assert me.stats()["pid"] == got[0][0]
    assert sum(w["served"] for w in me.stats()["workers"]) >= 2


def test_results_errors_and_no_leftover_shared_memory(address):
    client = attach(address, gpus=[], cpu_workers=1)
    data = clip("h264", frames=24)
    before = _shm_names()
    out = client.preprocess_video(data, decode={"num_frames": 4}, profile="qwen2_vl", dtype=torch.bfloat16)
    want = mmprep.preprocess(videos=[mmprep.decode_video(data, num_frames=4, device="cpu")], device="cpu",
                             profile="qwen2_vl", dtype=torch.bfloat16)
    assert out.keys() == want.keys() and all(torch.equal(out[k], want[k]) for k in want)
    with pytest.raises(mmprep.EmptyMediaError):  # the same MediaError subclass as in-process
        client.decode_video(b"", num_frames=4)
    with pytest.raises(mmprep.CorruptMediaError):
        client.decode_video(data[: len(data) // 2], num_frames=4)
    assert client.ping() >= 1
    client.close()  # the service unlinks the last answer's segments when the caller goes
    deadline = time.monotonic() + 10
    while _shm_names() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (_shm_names() - before)


def test_a_dead_service_is_a_clear_error_and_is_restarted(address):
    client = attach(address, gpus=[], cpu_workers=1)
    pid = client.stats()["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(ServiceError):
        client.ping()
    with pytest.raises(ServiceError, match="no mmprep service"):
        attach(address, start=False)
    again = attach(address, gpus=[], cpu_workers=1)  # a stale socket is replaced by a new service
    assert again.stats()["pid"] != pid and again.ping() >= 1


def test_gpus_argument():
    """``attach(gpus=[])`` starts the host's service with ``--gpus ""``: CPU workers only, also on a GPU host."""
    assert parse_gpus(None) is None and parse_gpus("") == [] and parse_gpus("0, 2") == [0, 2]
    with pytest.raises(ValueError, match="--gpus must be comma-separated GPU ordinals"):
        parse_gpus("cuda:0")


def test_wrong_key_is_refused(address):
    attach(address, gpus=[], cpu_workers=1)
    with open(address + ".key", "rb") as f:
        key = f.read()
    with open(address + ".key", "wb") as f:
        f.write(b"x" * 32)
    try:
        with pytest.raises(ServiceError, match="does not match"):
            attach(address, start=False)
    finally:
        with open(address + ".key", "wb") as f:
            f.write(key)


def test_a_request_given_up_on_does_not_lend_its_input_segment_again(address):
    """The worker reads the caller's segment in place: after a timeout it may still be reading, so the caller
    unlinks that segment instead of putting the next request's bytes into it."""
    client = attach(address, gpus=[], cpu_workers=1)
    data = clip("h264", frames=48)
    client.ping()
    client._arena.trim()
    before = _shm_names()
    with pytest.raises(ServiceError, match="timeout"):
        client.decode_video(data, num_frames=8, timeout=0.001)
    assert not (_shm_names() - before)  # its segment is gone, not kept for the next request
    got = client.decode_video(data, num_frames=8)
    assert torch.equal(got.frames, mmprep.decode_video(data, num_frames=8, device="cpu").frames)
