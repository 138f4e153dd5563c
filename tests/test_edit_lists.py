"""Edit lists and odd start times: mmprep counts, samples and returns the frames FFmpeg/OpenCV show.

``ffmpeg -ss S -i in.mp4 -c copy`` keeps the packets from the keyframe before S and writes an edit
list that hides those before S; phones and editors do the same. The clips here are made the same
way with PyAV: packets remuxed from a keyframe, timestamps shifted so that S becomes 0.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import mmprep
from mmprep.testing import make_video

from .helpers import clip, report


def remux(src: bytes, *, start: float, stop: float, shift: float, fmt: str = "mp4") -> bytes:
    """Packets from the last keyframe at or before ``start`` until the first (in decode order) shown
    after ``stop`` seconds, timestamps moved by -``shift`` s."""
    import av

    inp = av.open(io.BytesIO(src))
    vs = inp.streams.video[0]
    tb = vs.time_base
    pkts = [p for p in inp.demux(vs) if p.size and p.pts is not None]
    first = max(i for i, p in enumerate(pkts) if p.is_keyframe and p.pts * tb <= start + 1e-9)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        ost = out.add_stream_from_template(vs)
        for p in pkts[first:]:
            if p.pts * tb > stop:
                break
            p.pts -= int(round(shift / tb))
            p.dts -= int(round(shift / tb))
            p.stream = ost
            out.mux(p)
    inp.close()
    return buf.getvalue()


def with_edits(data: bytes, spans: list[tuple[float, float]]) -> bytes:
    """``data`` (an MP4 with its moov after the mdat) with an edit list showing media ``(start, duration)``
    spans one after the other: concatenated cuts, as editors write them."""
    import struct

    def boxes(b, s, e):
        o = s
        while o + 8 <= e:
            size, kind = struct.unpack(">I4s", b[o : o + 8])
            yield kind, o, o + size
            o += size

    b = bytearray(data)
    top = {k: (s, e) for k, s, e in boxes(b, 0, len(b))}
    ms, me = top[b"moov"]
    assert ms > top[b"mdat"][0], "moov must follow mdat (chunk offsets stay valid)"
    movie_ts = next(struct.unpack(">I", b[s + 20 : s + 24])[0] for k, s, _ in boxes(b, ms + 8, me) if k == b"mvhd")
    ts, te = next((s, e) for k, s, e in boxes(b, ms + 8, me) if k == b"trak")
    es, ee = next((s, e) for k, s, e in boxes(b, ts + 8, te) if k == b"edts")
    mdia = next((s, e) for k, s, e in boxes(b, ts + 8, te) if k == b"mdia")
    media_ts = next(struct.unpack(">I", b[s + 20 : s + 24])[0] for k, s, _ in boxes(b, mdia[0] + 8, mdia[1]) if k == b"mdhd")
    entries = b"".join(struct.pack(">IiHH", round(d * movie_ts), round(st * media_ts), 1, 0) for st, d in spans)
    elst = struct.pack(">I4sII", 16 + len(entries), b"elst", 0, len(spans)) + entries
    new = struct.pack(">I4s", 8 + len(elst), b"edts") + elst
    delta = len(new) - (ee - es)
    b[es:ee] = new
    struct.pack_into(">I", b, ts, te - ts + delta)
    struct.pack_into(">I", b, ms, me - ms + delta)
    return bytes(b)


def cases() -> dict[str, bytes]:
    h264 = clip("h264", width=160, height=96, frames=120, fps=30, gop=30, bframes=2)
    hevc = clip("hevc", width=256, height=144, frames=120, fps=30, gop=30, bframes=3)  # NVDEC's HEVC minimum: 144
    return {
        "h264_trim_bframes": remux(h264, start=1.3, stop=3.3, shift=1.3),
        "hevc_trim_bframes": remux(hevc, start=1.55, stop=3.0, shift=1.55),
        "h264_trim_at_keyframe": remux(h264, start=2.0, stop=3.0, shift=2.0),
        "mkv_start_time_5s": remux(h264, start=0.0, stop=4.0, shift=-5.0, fmt="matroska"),
        "mp4_start_time_2s": remux(h264, start=0.0, stop=2.0, shift=-2.0),
        "two_cuts": with_edits(clip("h264", width=160, height=96, frames=90, fps=30, gop=15, bframes=0),
                               [(0.5, 0.5), (2.0, 0.5)]),
    }


def opencv(data: bytes, num_frames: int):
    vv = pytest.importorskip("vllm.multimodal.video", reason="vLLM is not installed")
    return vv.VIDEO_LOADER_REGISTRY.load("opencv").load_bytes(data, num_frames=num_frames)


@pytest.mark.parametrize("name", sorted(cases()))
@pytest.mark.parametrize("num_frames", [-1, 8, 1])
def test_presentable_frames_equal_vllm_opencv_loader(name, num_frames):
    data = cases()[name]
    ref, meta = opencv(data, num_frames)
    v = mmprep.decode_video(data, num_frames=None if num_frames < 0 else num_frames, device="cpu")
    report("edit_list", case=name, num_frames=num_frames, total=v.total_frames, opencv_total=meta["total_num_frames"])
    assert v.total_frames == meta["total_num_frames"]
    assert v.indices == meta["frames_indices"]
    assert abs(v.duration - meta["duration"]) < 1e-9
    assert tuple(v.frames.shape) == ref.shape
    assert np.array_equal(v.frames.numpy(), ref)  # same frames, bit for bit (8-bit H.264/HEVC)


def test_concatenated_cuts_show_both_spans():
    """Two edits (0.5-1.0 s and 2.0-2.5 s of a 30 fps clip): frames 15-29, then 60-74."""
    from mmprep.testing import read_index

    v = mmprep.decode_video(cases()["two_cuts"], device="cpu")
    assert [read_index(f) for f in v.frames.numpy()] == list(range(15, 30)) + list(range(60, 75))


def test_first_shown_frame_is_the_edit_start():
    """The frame at index 0 of a clip cut at 1.3 s is the source's frame 39 (1.3 s x 30 fps)."""
    from mmprep.testing import read_index

    src = make_video("h264", width=320, height=96, frames=120, fps=30, gop=30, bframes=2)
    v = mmprep.decode_video(remux(src, start=1.3, stop=3.3, shift=1.3), indices=[0, 1, 10], device="cpu")
    assert [read_index(f) for f in v.frames.numpy()] == [39, 40, 49]
    assert v.timestamps[0] == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(cases()))
def test_presentable_frames_on_gpu(name):
    data = cases()[name]
    cpu = mmprep.decode_video(data, num_frames=8, device="cpu")
    if name == "two_cuts":  # cut-away pictures share timestamps with shown ones: NVDEC refuses, auto falls back
        with pytest.raises(mmprep.UnsupportedCodecError, match="several edits"):
            mmprep.decode_video(data, num_frames=8, device="cuda")
        auto = mmprep.decode_video(data, num_frames=8, device="auto")
        assert auto.backend == "cpu" and torch.equal(auto.frames, cpu.frames)
        return
    gpu = mmprep.decode_video(data, num_frames=8, device="cuda")
    assert gpu.total_frames == cpu.total_frames and gpu.indices == cpu.indices
    diff = (gpu.frames.cpu().to(torch.int16) - cpu.frames.to(torch.int16)).abs().float()
    report("edit_list_gpu", case=name, mean=float(diff.mean()), max=float(diff.max()))
    assert float(diff.mean()) < 1.5  # NVDEC colour conversion vs swscale, as for every NVDEC test
