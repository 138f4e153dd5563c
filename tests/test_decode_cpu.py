import io

import av
import numpy as np
import pytest
import torch

import mmprep
from mmprep.testing import read_index

from .helpers import clip

CODECS = ["h264", "hevc", "vp9", "av1"]
SIZES = [(322, 242), (640, 360)]


def pyav_reference(data: bytes) -> np.ndarray:
    """PyAV's own full decode to RGB, the reference the CPU backend must agree with."""
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_full_decode_matches_pyav_and_is_in_order(codec, size):
    data = clip(codec, width=size[0], height=size[1], frames=40)
    v = mmprep.decode_video(data, device="cpu")
    assert v.backend == "cpu" and v.codec == codec
    assert v.frames.shape == (40, size[1], size[0], 3) and v.frames.dtype == torch.uint8
    assert v.indices == list(range(40)) and v.total_frames == 40
    assert [read_index(f) for f in v.frames.numpy()] == list(range(40))
    ref = pyav_reference(data)
    assert np.array_equal(v.frames.numpy(), ref)  # same FFmpeg decoder and swscale conversion


@pytest.mark.parametrize("codec", CODECS)
def test_sampled_frames_are_the_right_ones(codec):
    data = clip(codec, frames=48, fps=24)
    v = mmprep.decode_video(data, num_frames=8, device="cpu")
    assert v.indices == np.linspace(0, 47, 8, dtype=int).tolist()
    assert [read_index(f) for f in v.frames.numpy()] == v.indices
    assert v.timestamps == pytest.approx([i / 24 for i in v.indices], abs=1e-3)
    v = mmprep.decode_video(data, fps=2, device="cpu")  # 2 s clip at 2 fps -> 4 frames
    assert len(v.indices) == 4 and [read_index(f) for f in v.frames.numpy()] == v.indices


def test_metadata():
    data = clip("h264", frames=48, fps=24)
    v = mmprep.decode_video(data, num_frames=4, device="cpu")
    assert (v.fps, v.duration, v.total_frames, v.width, v.height) == (24.0, 2.0, 48, 322, 242)
    meta = v.vllm_metadata()
    assert meta["frames_indices"] == v.indices and meta["total_num_frames"] == 48
    assert meta["do_sample_frames"] is False and meta["video_backend"] == "mmprep-cpu"
    assert "frames=(4, 242, 322, 3)" in repr(v)


def test_every_source_type(tmp_path):
    data = clip("h264", frames=12)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    want = mmprep.decode_video(data, device="cpu").frames
    for src in (bytearray(data), memoryview(data), str(path), path, io.BytesIO(data), open(path, "rb")):
        got = mmprep.decode_video(src, device="cpu").frames
        assert torch.equal(got, want), type(src)


def test_a_contiguous_memoryview_is_read_in_place():
    import numpy as np

    from mmprep.source import read_source

    buf = bytearray(b"abcdef")
    got = read_source(memoryview(buf), max_bytes=100)
    buf[0] = ord("z")  # the bytes were not copied: a change shows
    assert bytes(got) == b"zbcdef"
    wide = np.arange(4, dtype=np.int16)  # another item format: read as its bytes
    assert bytes(read_source(memoryview(wide), max_bytes=100)) == wide.tobytes()
    assert read_source(memoryview(b"abcdef")[::2], max_bytes=100) == b"ace"  # not contiguous: a copy


def test_a_view_file_reads_and_seeks_like_a_bytes_file():
    """``open_buffer`` of a memoryview (what PyAV reads from in a service worker) behaves as ``io.BytesIO`` would."""
    from mmprep.source import open_buffer

    data = bytes(range(10))
    f, ref = open_buffer(memoryview(data)), io.BytesIO(data)
    for g in (f, ref):
        g.seek(3)
    into, want = bytearray(4), bytearray(4)
    assert (f.readinto(into), into) == (ref.readinto(want), want)
    assert f.read(2) == ref.read(2) and f.tell() == ref.tell() == 9
    assert (f.readinto(into), f.readinto(into)) == (1, 0) and into[0] == 9  # short at the end, then nothing
    assert f.seek(-4, io.SEEK_END) == 6 and f.read() == data[6:]


def test_explicit_indices_any_order_with_repeats():
    data = clip("h264", frames=48)
    v = mmprep.decode_video(data, indices=[30, 2, 30, 47], device="cpu")
    assert [read_index(f) for f in v.frames.numpy()] == [30, 2, 30, 47]
    with pytest.raises(ValueError, match="indices"):
        mmprep.decode_video(data, indices=[48], device="cpu")
    with pytest.raises(ValueError, match="either indices"):
        mmprep.decode_video(data, indices=[1], num_frames=3, device="cpu")


def test_mkv_and_other_containers():
    data = clip("h264", frames=20, container="matroska")
    v = mmprep.decode_video(data, num_frames=5, device="cpu")
    assert [read_index(f) for f in v.frames.numpy()] == v.indices


def test_bt709_tagged_stream_uses_its_matrix():
    import io as _io

    from mmprep.testing import synthetic_frame

    buf = _io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.codec_context.colorspace = 1  # BT.709
        s.options = {"preset": "veryfast"}
        for i in range(4):
            for p in s.encode(av.VideoFrame.from_ndarray(synthetic_frame(i, 320, 240), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    v = mmprep.decode_video(buf.getvalue(), device="cpu")
    from mmprep.probe import probe

    assert probe(buf.getvalue(), max_pixels=1 << 30).stream.matrix == "bt709"
    assert [read_index(f) for f in v.frames.numpy()] == [0, 1, 2, 3]
    # Pixels: PyAV told the source is BT.709 (limited range) gives the same RGB; told BT.601, it differs.
    with av.open(_io.BytesIO(buf.getvalue())) as c:
        decoded = list(c.decode(video=0))
    ref709 = np.stack([f.reformat(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG").to_ndarray()
                       for f in decoded])
    ref601 = np.stack([f.reformat(format="rgb24", src_colorspace="ITU601", src_color_range="MPEG").to_ndarray()
                       for f in decoded])
    assert np.array_equal(v.frames.numpy(), ref709)
    assert not np.array_equal(v.frames.numpy(), ref601)


def test_device_argument_is_validated():
    data = clip("h264", frames=4)
    for bad in ("tpu", "cuda:x", 3):
        with pytest.raises(ValueError, match="device must be"):
            mmprep.decode_video(data, device=bad)


def test_import_needs_no_gpu():
    import subprocess
    import sys

    code = "import mmprep, sys; assert 'PyNvVideoCodec' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
