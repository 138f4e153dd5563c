"""Video decode throughput: mmprep NVDEC vs mmprep CPU vs PyAV vs OpenCV vs torchcodec, vLLM's own
loaders when vLLM is importable, and the raw NVDEC limit, on 10 s 1080p H.264 / HEVC clips.

Each benchmark round decodes ``threads x VIDEOS_PER_THREAD`` videos from bytes, sampling 32
frames (or all), on ``threads`` Python threads; ``extra_info`` carries videos/s and frames/s.
"""

from __future__ import annotations

import io
import os
import threading

import pytest
import torch

import mmprep

from .media import clip_path
from .util import VIDEOS_PER_THREAD, kernels_ready, run_rounds, run_threads, sample32

CLIP = "h264_1080p_gop250"  # the main clip: every path, every thread count
OTHER_CLIPS = ["h264_1080p_gop30", "hevc_1080p_gop250"]  # 1 s GOP, HEVC: fewer cases each


def _engines() -> int:
    if not torch.cuda.is_available():
        return 1
    from mmprep.decode.nvdec_pool import nvdec_engines

    return nvdec_engines(torch.cuda.get_device_name(0))


THREADS = sorted({1, _engines(), 16})


def measure(benchmark, fn, data: bytes, threads: int, **info) -> None:
    frames = [0]

    def round_() -> None:
        frames[0] = run_threads(fn, data, threads)

    videos = threads * VIDEOS_PER_THREAD
    run_rounds(benchmark, round_, videos, rounds=2, threads=threads, **info)
    secs = benchmark.stats.stats.mean
    benchmark.extra_info.update(videos=videos, videos_per_s=videos / secs, frames_per_s=frames[0] / secs)


def mmprep_nvdec(num_frames):
    return lambda data: mmprep.decode_video(data, num_frames=num_frames, device="cuda").frames.shape[0]


def mmprep_cpu(num_frames):
    return lambda data: mmprep.decode_video(data, num_frames=num_frames, device="cpu").frames.shape[0]


def pyav_naive(num_frames):
    """What a plain PyAV loader does: decode every frame up to the last wanted, convert the wanted."""
    import av

    def run(data: bytes) -> int:
        with av.open(io.BytesIO(data)) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            total = vs.frames
            want = set(sample32(total)) if num_frames else set(range(total))
            last = max(want)
            n = 0
            for i, f in enumerate(c.decode(vs)):
                if i in want:
                    f.to_ndarray(format="rgb24")
                    n += 1
                if i >= last:
                    break
            return n

    return run


def opencv_vllm_style(num_frames, clip=CLIP):
    """OpenCV the way vLLM's loader drives it (grab() every frame, retrieve() the sampled ones), from a
    cached file and without the BGR->RGB conversion and stacking: the decoder alone. ``vllm-opencv`` is
    vLLM's loader itself, from bytes."""
    import cv2

    path = str(clip_path(clip))

    def run(data: bytes) -> int:  # OpenCV reads the cached file of the same bytes
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        want = set(sample32(total)) if num_frames else set(range(total))
        n = 0
        for i in range(max(want) + 1):
            if not cap.grab():
                break
            if i in want:
                ok, frame = cap.retrieve()
                n += ok
        cap.release()
        return n

    return run


def torchcodec_cpu(num_frames):
    """torchcodec's CPU decoder (FFmpeg), approximate seek mode, frames picked by index."""
    from torchcodec.decoders import VideoDecoder

    def run(data: bytes) -> int:
        dec = VideoDecoder(data, seek_mode="approximate", device="cpu")
        total = dec.metadata.num_frames
        idx = sample32(total) if num_frames else list(range(total))
        return dec.get_frames_at(indices=idx).data.shape[0]

    return run


def vllm_loader(name: str, num_frames):
    """vLLM's own video loader by registry name (``opencv``, ``pynvvideocodec`` with its default 2
    decoder slots, ``mmprep``)."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    if name.startswith("mmprep"):
        from mmprep.vllm import register

        register()
    loader = VIDEO_LOADER_REGISTRY.load(name)
    # Like for like with vLLM's pynvvideocodec loader, which copies frames to the host.
    kw = {"device": "cuda", "frames_on": "host"} if name.startswith("mmprep") else {}
    return lambda data: len(loader.load_bytes(data, num_frames=num_frames or -1, **kw)[0])


def raw_nvdec_loop():
    """The hardware limit: PyNvVideoCodec demux + decode of every frame, native NV12, no copies."""
    import PyNvVideoCodec as nvc

    from mmprep.decode.video_nvdec import BytesReader

    local = threading.local()

    def run(data: bytes) -> int:
        dm = nvc.CreateDemuxer(BytesReader(data))
        if getattr(local, "dec", None) is None:
            local.dec = nvc.CreateDecoder(
                gpuid=0, codec=dm.GetNvCodecId(), cudacontext=0, cudastream=0, usedevicememory=True,
                maxwidth=1920, maxheight=1088, outputColorType=nvc.OutputColorType.NATIVE,
            )
        n = 0
        for pkt in dm:
            n += len(local.dec.Decode(pkt))
        n += len(local.dec.Decode(nvc.PacketData()))
        return n

    return run


@pytest.fixture(scope="module")
def kernels_built() -> None:
    kernels_ready()


GPU_PATHS = ["mmprep-nvdec", "nvdec-reference-loop", "vllm-pynvvideocodec", "vllm-mmprep"]
CPU_PATHS = ["mmprep-cpu", "pyav", "opencv-decoder-only", "torchcodec-cpu", "vllm-opencv"]
MAIN_CPU = ["mmprep-cpu", "pyav", "opencv-decoder-only", "torchcodec-cpu"]
# (clip, path, frames, threads). Main clip: GPU paths at 1 / engines / 16 threads, CPU paths at 1 and
# 16 threads for sample-32 and at 1 thread for whole-stream decode (16 x 300 1080p frames is minutes
# of CPU). Other clips: mmprep / raw NVDEC / OpenCV at 1 and 16 threads, sample-32 and all.
CASES = (
    [(CLIP, p, "sample32", t) for p in ["mmprep-nvdec"] + MAIN_CPU for t in (THREADS if p in GPU_PATHS else [1, 16])]
    + [(CLIP, p, "sample32", t) for p in ["vllm-opencv", "vllm-pynvvideocodec", "vllm-mmprep"] for t in (1, 16)]
    + [(CLIP, p, "all", t) for p in ["mmprep-nvdec", "nvdec-reference-loop"] for t in THREADS]
    + [(CLIP, p, "all", 1) for p in MAIN_CPU]
    + [(c, p, f, t) for c in OTHER_CLIPS for p in ["mmprep-nvdec", "opencv-decoder-only"] for f in ("sample32", "all")
       for t in ((1, 16) if p in GPU_PATHS or f == "sample32" else (1,))]
    + [(c, "nvdec-reference-loop", "all", t) for c in OTHER_CLIPS for t in (1, 16)]
)


def _needs(path: str) -> None:
    if path.startswith("vllm-"):
        pytest.importorskip("vllm.multimodal.video", reason="vLLM is not importable here")
    if path == "torchcodec-cpu":
        pytest.importorskip("torchcodec.decoders", reason="torchcodec is not installed")
        try:  # torchcodec loads the system's FFmpeg libraries on first use
            torchcodec_cpu(32)(clip_path(CLIP).read_bytes())
        except (RuntimeError, OSError) as e:
            pytest.skip(f"torchcodec cannot load FFmpeg here: {str(e).splitlines()[0][:120]}")


@pytest.mark.parametrize(
    "clip,path,frames,threads",
    [pytest.param(*c, marks=[pytest.mark.gpu] if c[1] in GPU_PATHS else [], id=f"{c[0]}-{c[1]}-{c[2]}-t{c[3]}")
     for c in CASES],
)
def bench_video_decode(benchmark, kernels_built, clip, path, frames, threads):
    if threads > 1 and path in CPU_PATHS and (os.cpu_count() or 1) < 4:
        pytest.skip(f"{threads} CPU threads on a {os.cpu_count()}-core machine measure nothing useful")
    _needs(path)
    num = 32 if frames == "sample32" else None
    make = {
        "mmprep-nvdec": mmprep_nvdec,
        "mmprep-cpu": mmprep_cpu,
        "pyav": pyav_naive,
        "opencv-decoder-only": lambda n: opencv_vllm_style(n, clip),
        "torchcodec-cpu": torchcodec_cpu,
        "vllm-opencv": lambda n: vllm_loader("opencv", n),
        "vllm-pynvvideocodec": lambda n: vllm_loader("pynvvideocodec", n),
        "vllm-mmprep": lambda n: vllm_loader("mmprep", n),
        "nvdec-reference-loop": lambda _: raw_nvdec_loop(),
    }[path]
    benchmark.group = f"decode {clip} {frames} threads={threads}"
    measure(benchmark, make(num), clip_path(clip).read_bytes(), threads, path=path, clip=clip, frames=frames)
