import pytest

import mmprep
from mmprep.probe import probe
from mmprep.decode.video_cpu import decode_cpu
from mmprep.sampling import DecodePlan, plan_decode, sample_indices, split_feed

from .helpers import clip


def vllm_uniform(total, duration, num_frames, fps):
    """vLLM's own uniform sampler (``VideoBackend.compute_frames_index_to_sample``) as the reference."""
    video = pytest.importorskip("vllm.multimodal.video", reason="vLLM is not installed")
    try:
        from vllm.multimodal.video_decoders.base import VideoSourceMetadata, VideoTargetMetadata
    except ImportError:  # vLLM 0.26 keeps them in vllm.multimodal.video
        from vllm.multimodal.video import VideoSourceMetadata, VideoTargetMetadata
    src = VideoSourceMetadata(total_frames_num=total, original_fps=total / duration, duration=duration)
    tgt = VideoTargetMetadata(num_frames=num_frames, fps=fps, max_duration=10**6)
    return [int(i) for i in video.VideoBackend.compute_frames_index_to_sample(src, tgt)]


@pytest.mark.parametrize("total,fps_src", [(1, 30.0), (2, 25.0), (7, 24.0), (48, 24.0), (299, 30.0), (300, 30.0),
                                           (301, 29.97), (1000, 60.0), (4096, 23.976)])
@pytest.mark.parametrize("num_frames,fps", [(None, None), (1, None), (2, None), (8, None), (31, None), (32, None),
                                            (None, 0.5), (None, 1), (None, 2), (32, 2), (500, 0.5), (3, 30)])
def test_sample_indices_matches_vllm(total, fps_src, num_frames, fps):
    duration = total / fps_src
    got = sample_indices(total, duration, num_frames=num_frames, fps=fps)
    assert got == vllm_uniform(total, duration, num_frames or -1, fps or -1)
    assert got == sorted(set(got)) and 0 <= got[0] and got[-1] < total


@pytest.mark.parametrize("bad", [{"num_frames": 0}, {"num_frames": -3}, {"fps": 0}, {"fps": -2}, {"num_frames": 2.5}])
def test_sample_indices_rejects_bad_arguments(bad):
    with pytest.raises(ValueError) as e:
        sample_indices(10, 1.0, **bad)
    assert next(iter(bad)) in str(e.value)


def test_sample_indices_rejects_non_numbers():
    with pytest.raises(TypeError, match="num_frames"):
        sample_indices(10, 1.0, num_frames="8")


def test_plan_skips_gops_and_stops_after_last_frame():
    data = clip("h264", frames=96, gop=12, bframes=2)
    p = probe(data, max_pixels=1 << 30)
    assert p.stream.num_frames == 96 and sum(p.keyframe) == 8
    plan = plan_decode(p, [50])
    gop_start = max(i for i, k in enumerate(p.keyframe[: p.packet_of_frame()[50] + 1]) if k)
    assert plan.feed[0] == gop_start
    assert plan.feed[-1] == p.packet_of_frame()[50]
    assert len(plan.feed) <= 12
    full = plan_decode(p, list(range(96)))
    assert full.feed == list(range(96))


def test_plan_drops_unsampled_disposable_frames():
    data = clip("h264", frames=48, gop=48, bframes=3)
    p = probe(data, max_pixels=1 << 30)
    assert any(p.disposable), "x264 with B-frames should produce non-reference B-frames"
    plan = plan_decode(p, [47])
    skipped = set(range(plan.feed[0], plan.feed[-1] + 1)) - set(plan.feed)
    assert skipped and all(p.disposable[i] for i in skipped)


def test_decoding_with_plan_gives_same_frames_as_full_decode():
    """The real proof that skipped packets were safe: frames equal a full decode's."""
    data = clip("h264", frames=96, gop=24, bframes=3)
    full = mmprep.decode_video(data, device="cpu")
    for n in (5, 9, 17):
        part = mmprep.decode_video(data, num_frames=n, device="cpu")
        assert (part.frames == full.frames[part.indices]).all()


@pytest.mark.parametrize("codec,bframes", [("h264", 3), ("hevc", 4)])
def test_every_frame_decoded_alone_equals_full_decode(codec, bframes):
    """Single-frame plans (GOP skip, leading pictures, dropped non-reference frames) are exact."""
    data = clip(codec, frames=72, gop=24, bframes=bframes)
    full = mmprep.decode_video(data, device="cpu")
    for i in range(72):
        one = mmprep.decode_video(data, indices=[i], device="cpu")
        assert one.indices == [i]
        assert (one.frames[0] == full.frames[i]).all(), f"frame {i}"


def _decode_half(data: bytes, p, plan: DecodePlan, half: list[int]) -> dict[int, "torch.Tensor"]:
    """Decode only ``half`` of ``plan.feed`` with a fresh FFmpeg decoder: {packet ordinal: frame} of the
    wanted frames in it."""
    wanted = [q for q in half if q in plan.slots]
    sub = DecodePlan(feed=half, slots={q: [i] for i, q in enumerate(wanted)}, sequential=False)
    frames = decode_cpu(data, p, sub, len(wanted))
    return dict(zip(wanted, frames))


@pytest.mark.parametrize("codec,bframes", [("h264", 3), ("hevc", 4)])
@pytest.mark.parametrize("pick", ["all", "every5", "two", "last"])
def test_split_halves_decode_alone_to_the_same_frames(codec, bframes, pick):
    """Each half of a cut plan, decoded by a fresh decoder, gives exactly the full decode's frames (x265's open
    GOPs put leading pictures after its keyframes: a cut there would lose them)."""
    data = clip(codec, frames=120, gop=24, bframes=bframes)
    p = probe(data, max_pixels=1 << 30)
    indices = {"all": list(range(120)), "every5": list(range(0, 120, 5)), "two": [10, 110], "last": [119]}[pick]
    plan = plan_decode(p, indices)
    halves = split_feed(p, plan, min_part=8)
    if pick in ("all", "every5") and codec == "h264":
        assert halves is not None, "a 5-GOP plan of closed GOPs has sound cuts"
    if halves is None:
        return
    a, b = halves
    assert a + b == plan.feed and p.keyframe[b[0]] and min(len(a), len(b)) >= 8
    full = mmprep.decode_video(data, device="cpu").frames
    got = {**_decode_half(data, p, plan, a), **_decode_half(data, p, plan, b)}
    assert sorted(got) == sorted(plan.slots)
    for q, frame in got.items():
        for pos in plan.slots[q]:
            assert (frame == full[indices[pos]]).all(), f"packet {q}"


def test_split_needs_two_sizable_halves_and_timestamps():
    data = clip("h264", frames=120, gop=24, bframes=3)
    p = probe(data, max_pixels=1 << 30)
    plan = plan_decode(p, list(range(120)))
    a, b = split_feed(p, plan, min_part=8)
    assert abs(len(a) - len(b)) <= 24, "the most even cut of five 24-frame GOPs"
    assert split_feed(p, plan, min_part=61) is None
    assert split_feed(p, DecodePlan(plan.feed, plan.slots, sequential=True), min_part=8) is None
