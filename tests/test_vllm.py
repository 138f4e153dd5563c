"""The vLLM plugin against real vLLM (0.32 in CI, 0.26 on the GPU machine): entry point, media path, real Qwen2-VL
processor, errors.

The CPU path: the tests that compare pixels with vLLM's own decoders expect bit-equal results, which hold where
mmprep decodes on the CPU, so they skip where CUDA is visible (there "auto" means NVDEC/nvJPEG and mmprep's
processor: ``tests/test_gpu_vllm.py``; run this module with ``CUDA_VISIBLE_DEVICES=`` for the CPU path on a GPU host).
Skipped where vLLM is not installed.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import torch

from .images import encode, jpeg, pattern
from .helpers import clip, report, vllm_plugins_loaded

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install mmprep[test])")

from PIL import Image  # noqa: E402

import mmprep  # noqa: E402

from mmprep.vllm import identity  # noqa: E402

from .tiny_model import make_tiny_qwen2_vl  # noqa: E402

cpu_path = pytest.mark.skipif(torch.cuda.is_available(), reason="compares CPU-path pixels bit for bit; CUDA is "
                              "visible here (run with CUDA_VISIBLE_DEVICES= for the CPU path; GPU: test_gpu_vllm.py)")

PROMPT_VIDEO = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe<|im_end|>\n"
PROMPT_IMAGE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe<|im_end|>\n"


def media(item):
    """The media of one parsed item: vLLM 0.32 wraps it with its bytes (``MediaWithBytes``), 0.26 does not."""
    return getattr(item, "media", item)


def data_url(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def plugin():
    """Load vLLM's general plugins the way every vLLM process does, with the env var set."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    with vllm_plugins_loaded(VLLM_VIDEO_LOADER_BACKEND="mmprep", VLLM_PLUGINS=None, VLLM_MEDIA_CONNECTOR=None):
        yield VIDEO_LOADER_REGISTRY


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    from vllm.config import ModelConfig

    path = make_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))
    return ModelConfig(model=str(path), tokenizer=str(path), dtype="float32", max_model_len=32768)


@pytest.fixture(scope="module")
def processor(model_config):
    from vllm.multimodal import MULTIMODAL_REGISTRY

    proc = MULTIMODAL_REGISTRY.create_processor(model_config)
    assert type(proc).__name__ == "Qwen2VLMultiModalProcessor"
    return proc


def chat(model_config, part: dict, media_io_kwargs=None):
    """vLLM's server-side message parsing (what the OpenAI chat endpoint runs) -> mm_data."""
    try:
        from vllm.renderers.chat_utils import parse_chat_messages  # 0.32
    except ImportError:
        from vllm.entrypoints.chat_utils import parse_chat_messages  # 0.26

    messages = [{"role": "user", "content": [part, {"type": "text", "text": "Describe"}]}]
    _, mm_data, _ = parse_chat_messages(messages, model_config, "openai", media_io_kwargs=media_io_kwargs)
    return mm_data


def run_processor(processor, prompt: str, mm_data: dict):
    out = processor(prompt, processor.info.parse_mm_data(mm_data), hf_processor_mm_kwargs={})
    kw = out["mm_kwargs"].get_data()
    return out, kw


def placeholder_counts(out, modality: str) -> list[int]:
    return [r.length for r in out["mm_placeholders"][modality]]


def test_entry_point_registers_loader_and_connector(plugin):
    from importlib.metadata import entry_points

    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY

    eps = [e for e in entry_points(group="vllm.general_plugins") if e.name == "mmprep"]
    assert [e.value for e in eps] == ["mmprep.vllm:register"]
    for name in ("mmprep", "mmprep_qwen2_vl", "mmprep_qwen3_vl", "mmprep_dynamic"):
        assert name in plugin.name2class and plugin.backend_requires_gpu(name)
    assert "mmprep" in MEDIA_CONNECTOR_REGISTRY.name2class
    # The env var routes the models' own samplers to their mmprep twins.
    assert plugin.get_backend_for_video_processor("Qwen2VLVideoProcessor") == "mmprep_qwen2_vl"
    assert plugin.get_backend_for_video_processor("Qwen3VLVideoProcessor") == "mmprep_qwen3_vl"


@cpu_path
def test_video_media_io_uses_mmprep(plugin):
    from vllm.multimodal.media import ImageMediaIO, VideoMediaIO

    data = clip("h264", width=320, height=240, frames=60, fps=20, gop=20)
    io = VideoMediaIO(ImageMediaIO(), num_frames=8)
    assert type(io.video_loader).__name__ == "MmprepVideoBackend"
    got = io.load_bytes(data)
    frames, meta = media(got)
    ref_frames, ref_meta = plugin.load("opencv").load_bytes(data, num_frames=8)
    assert meta["video_backend"] == "mmprep" and ref_meta["video_backend"] == "opencv"
    assert {k: v for k, v in meta.items() if k != "video_backend"} == {
        k: v for k, v in ref_meta.items() if k != "video_backend"
    }
    assert isinstance(frames, np.ndarray) and frames.shape == ref_frames.shape and frames.dtype == np.uint8
    diff = np.abs(frames.astype(np.int16) - ref_frames.astype(np.int16))
    report("vllm_loader_vs_opencv", mean=float(diff.mean()), max=int(diff.max()))
    assert diff.max() == 0  # same FFmpeg decoder and conversion on the CPU


@cpu_path
@pytest.mark.parametrize("size", [(320, 240), (226, 130)])
def test_qwen2_vl_video_matches_opencv_through_real_processor(plugin, model_config, processor, size):
    """Chat message -> MediaConnector -> loader -> Qwen2VLMultiModalProcessor, mmprep vs opencv."""
    w, h = size
    url = data_url("video/mp4", clip("h264", width=w, height=h, frames=45, fps=15, gop=15))
    part = {"type": "video_url", "video_url": {"url": url}}
    mine = chat(model_config, part)
    ref = chat(model_config, part, media_io_kwargs={"video": {"video_backend": "qwen2_vl"}})
    (frames, meta), = [media(v) for v in mine["video"]]
    (ref_frames, ref_meta), = [media(v) for v in ref["video"]]
    assert meta["video_backend"] == "mmprep" and ref_meta["video_backend"] == "opencv"
    assert meta["frames_indices"] == ref_meta["frames_indices"]  # the qwen2_vl fps=2 sampler, both
    out, kw = run_processor(processor, PROMPT_VIDEO, mine)
    ref_out, ref_kw = run_processor(processor, PROMPT_VIDEO, ref)
    assert placeholder_counts(out, "video") == placeholder_counts(ref_out, "video")
    assert torch.equal(kw["video_grid_thw"], ref_kw["video_grid_thw"])
    a, b = kw["pixel_values_videos"], ref_kw["pixel_values_videos"]
    assert a.shape == b.shape and a.dtype == b.dtype
    d = (a.float() - b.float()).abs()
    report("vllm_processor_video_vs_opencv", size=f"{w}x{h}", mean=float(d.mean()),
           p99=float(d.flatten().quantile(0.99)), max=float(d.max()), tokens=placeholder_counts(out, "video"))
    assert d.max() == 0.0  # same decoded frames, same HF processor on the CPU


def test_media_io_kwargs_reach_the_loader(plugin, model_config):
    url = data_url("video/mp4", clip("h264", width=320, height=240, frames=60, fps=20, gop=20))
    part = {"type": "video_url", "video_url": {"url": url}}
    mm = chat(model_config, part, media_io_kwargs={"video": {"fps": 4, "device": "cpu"}})
    (frames, meta), = [media(v) for v in mm["video"]]
    assert len(meta["frames_indices"]) == 12 and frames.shape[0] == 12  # 3 s at 4 fps (qwen2_vl sampler)
    with pytest.raises(ValueError, match="seek_mode is an option of another video backend"):
        chat(model_config, part, media_io_kwargs={"video": {"seek_mode": "exact"}})


@pytest.fixture
def connector_env(plugin):
    from mmprep.vllm import register

    os.environ["VLLM_MEDIA_CONNECTOR"] = "mmprep"
    register()
    yield
    os.environ.pop("VLLM_MEDIA_CONNECTOR", None)
    register()


@cpu_path
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_images_through_connector_match_pil(connector_env, model_config, processor, fmt):
    img = Image.fromarray(pattern(203, 317))
    data = jpeg(203, 317) if fmt == "jpeg" else encode(img, "PNG")
    part = {"type": "image_url", "image_url": {"url": data_url(f"image/{fmt}", data)}}
    mine = chat(model_config, part)
    (item,) = mine["image"]
    assert isinstance(media(item), torch.Tensor)
    assert identity.tag_of(item) == identity.digest(data, "image", "cpu", tuple(media(item).shape), (255, 255, 255))
    os.environ["VLLM_MEDIA_CONNECTOR"] = "http"
    ref = chat(model_config, part)
    os.environ["VLLM_MEDIA_CONNECTOR"] = "mmprep"
    assert isinstance(media(ref["image"][0]), Image.Image)
    out, kw = run_processor(processor, PROMPT_IMAGE, mine)
    ref_out, ref_kw = run_processor(processor, PROMPT_IMAGE, ref)
    assert placeholder_counts(out, "image") == placeholder_counts(ref_out, "image")
    assert torch.equal(kw["image_grid_thw"], ref_kw["image_grid_thw"])
    d = (kw["pixel_values"].float() - ref_kw["pixel_values"].float()).abs()
    report("vllm_processor_image_vs_pil", fmt=fmt, mean=float(d.mean()), max=float(d.max()))
    assert d.max() == 0.0  # on the CPU mmprep decodes with the same PIL/libjpeg as vLLM


def test_connector_video_uses_model_sampler(connector_env, model_config):
    os.environ["VLLM_VIDEO_LOADER_BACKEND"] = "opencv"  # the connector alone routes video too
    try:
        from mmprep.vllm import register

        register()
        url = data_url("video/mp4", clip("h264", width=320, height=240, frames=45, fps=15, gop=15))
        mm = chat(model_config, {"type": "video_url", "video_url": {"url": url}})
        (frames, meta), = [media(v) for v in mm["video"]]
        assert meta["video_backend"] == "mmprep" and len(meta["frames_indices"]) == 6
    finally:
        os.environ["VLLM_VIDEO_LOADER_BACKEND"] = "mmprep"


BAD = {
    "empty": b"",
    "random": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "truncated": None,
    "text": b"this is not a video at all" * 10,
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_video_is_a_request_error(plugin, model_config, case):
    from mmprep import MediaError

    data = BAD[case] if BAD[case] is not None else clip("h264", width=320, height=240, frames=45)[:3000]
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", data)}}
    with pytest.raises(MediaError):  # a ValueError: vLLM's server answers it with HTTP 400
        chat(model_config, part)
    # The same process then serves a good request.
    good = data_url("video/mp4", clip("h264", width=320, height=240, frames=45, fps=15, gop=15))
    mm = chat(model_config, {"type": "video_url", "video_url": {"url": good}})
    assert media(mm["video"][0])[1]["video_backend"] == "mmprep"


@pytest.mark.parametrize("case", ["random", "truncated"])
def test_bad_image_is_a_request_error(connector_env, model_config, case):
    from mmprep import MediaError

    data = BAD["random"] if case == "random" else jpeg(203, 317)[:500]
    part = {"type": "image_url", "image_url": {"url": data_url("image/jpeg", data)}}
    with pytest.raises(MediaError):
        chat(model_config, part)


def test_serving_benchmark_copies_are_the_same_video_under_another_hash():
    """bench/serve_vllm.py's byte-distinct copies (a trailing ``free`` box): same frames in mmprep and in vLLM's
    opencv loader, another identity digest, so vLLM keys each copy apart."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    from bench.serve_vllm import with_free_box

    base = clip("h264", frames=60)
    copy = with_free_box(base, 3)
    a, b = mmprep.decode_video(base, num_frames=6, device="cpu"), mmprep.decode_video(copy, num_frames=6, device="cpu")
    assert copy != base and torch.equal(a.frames, b.frames) and a.vllm_metadata() == b.vllm_metadata()
    assert identity.digest(copy, "num_frames", 6) != identity.digest(base, "num_frames", 6)
    opencv = VIDEO_LOADER_REGISTRY.load("opencv")
    (fa, ma), (fb, mb) = opencv.load_bytes(base, num_frames=6), opencv.load_bytes(copy, num_frames=6)
    assert np.array_equal(fa, fb) and ma == mb


def test_serving_benchmark_image_copies_are_the_same_pixels_under_another_hash():
    """bench/serve_vllm.py's byte-distinct JPEG copies (a COM segment): the same pixels through mmprep, PIL and
    mmprep's nvJPEG gate, other bytes (so another identity)."""
    from mmprep.decode.image_gpu import jpeg_well_formed

    from bench.serve_vllm import with_comment

    base = jpeg(121, 203)
    copy = with_comment(base, 5)
    assert copy != base and jpeg_well_formed(base) and jpeg_well_formed(copy)
    assert torch.equal(mmprep.decode_images([copy], device="cpu")[0], mmprep.decode_images([base], device="cpu")[0])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(copy))), np.asarray(Image.open(io.BytesIO(base))))
    assert identity.digest(copy) != identity.digest(base)


def test_serving_benchmark_steady_rate_leaves_out_the_start_and_the_drain():
    from bench.serve_vllm import steady_rate

    start, busy, drain = [10.0, 11.0], [12.0 + 0.5 * i for i in range(10)], [30.0, 31.0]
    done = drain + busy + start  # in any order
    assert steady_rate(done, 2) == pytest.approx(10 / (16.5 - 11.0))  # 10 completions from the 2nd to the 3rd-last
    assert steady_rate(done, 2) > len(done) / (31.0 - 10.0)  # the whole run's rate, start and drain in
    assert steady_rate(done[:5], 2) is None  # too short to have every slot busy
