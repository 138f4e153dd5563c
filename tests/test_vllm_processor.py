"""mmprep inside vLLM's multimodal processor, against vLLM's own processor (real vLLM, real HF).

For the same request, the processor with mmprep's pixels must give what vLLM's default one gives:
prompt token ids, placeholder ranges, grid_thw and pixel values, bit for bit. On the CPU the hook
runs mmprep's torch path (``MMPREP_PROCESSOR_DEVICE=cpu``); on a GPU (marked ``gpu``) the fused kernels.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install mmprep[test])")

from PIL import Image  # noqa: E402

from mmprep.vllm import identity  # noqa: E402
from mmprep.vllm import processor as hook  # noqa: E402

from .tiny_model import make_tiny_qwen2_vl, make_tiny_qwen3_vl  # noqa: E402

PROMPT = "<|im_start|>user\n{}Describe<|im_end|>\n"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl_proc"))


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    return make_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl_proc"))


def model_config(path, **kw):
    import inspect

    from vllm.config import ModelConfig

    if "mm_device_do_normalize" in kw and "mm_device_do_normalize" not in inspect.signature(ModelConfig).parameters:
        pytest.skip("this vLLM has no device-side normalization (0.26)")
    return ModelConfig(model=str(path), tokenizer=str(path), max_model_len=32768, **kw)


def processors(cfg, device: str):
    """(vLLM's processor, the processor with mmprep's pixels) for one model config."""
    from vllm.multimodal import MULTIMODAL_REGISTRY

    hook.uninstall()
    ref = MULTIMODAL_REGISTRY.create_processor(cfg)
    hook.install()
    try:
        mine = MULTIMODAL_REGISTRY.create_processor(cfg)
    finally:
        hook.uninstall()
    opts = hook.options_for(cfg)
    mine.info._mmprep_opts = hook.PixelOptions(device=device, dtype=opts.dtype, keep_on_device=opts.keep_on_device)
    assert type(mine.info).__name__.startswith("Mmprep") and not type(ref.info).__name__.startswith("Mmprep")
    return ref, mine


def frames(t: int, h: int, w: int, seed: int) -> np.ndarray:
    """Natural-ish frames: smooth gradients plus noise, so resizing has real work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(h + w, 1))], -1)
    out = [(base + rng.integers(0, 40, (h, w, 3)) + 9 * i) % 256 for i in range(t)]
    return np.stack(out).astype(np.uint8)


def video_item(t: int, h: int, w: int, seed: int = 0):
    meta = {"total_num_frames": t * 3, "fps": 30.0, "duration": t / 10, "video_backend": "opencv",
            "frames_indices": list(range(0, 3 * t, 3)), "do_sample_frames": False}
    return (frames(t, h, w, seed), meta)


def apply(proc, prompt: str, mm_data: dict, kwargs: dict | None = None, path: str | None = None,
          uuids: dict | None = None, cache=None):
    """Run ``proc``; ``path`` ("mmprep"/"hf"): the hook's path every sub-processor call must take;
    ``cache``: a processor cache (0.32 takes it per call, 0.26 on the processor)."""
    before = dict(hook.CALLS)
    extra = {}
    if cache is not None:
        if "cache" in inspect.signature(proc.__call__).parameters:
            extra["cache"] = cache
        else:
            proc.cache = cache
    out = proc(prompt, proc.info.parse_mm_data(mm_data), uuids, hf_processor_mm_kwargs=kwargs or {}, **extra)
    ran = {k: hook.CALLS[k] - before[k] for k in before}
    if path is None:
        assert not any(ran.values()), f"vLLM's own processor went through the hook: {ran}"
    else:
        assert ran[path] > 0 and sum(ran.values()) == ran[path], ran
    return out, out["mm_kwargs"].get_data()


def assert_same(a, b):
    """Same prompt, same placeholders, same tensors (dtype, shape, every value)."""
    (out_a, kw_a), (out_b, kw_b) = a, b
    assert out_a["prompt_token_ids"] == out_b["prompt_token_ids"]
    assert {m: [(r.offset, r.length) for r in v] for m, v in out_a["mm_placeholders"].items()} == {
        m: [(r.offset, r.length) for r in v] for m, v in out_b["mm_placeholders"].items()}
    assert kw_a.keys() == kw_b.keys()
    for k in kw_a:
        x, y = kw_a[k], kw_b[k]
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert not x.is_cuda, f"{k} must reach vLLM on the host here"
            assert torch.equal(x, y.to(x.device)), f"{k}: max diff {(x.float() - y.float()).abs().max()}"


CASES = [
    # (dtype, device normalization, video T,H,W, processor kwargs)
    ("float32", None, (8, 240, 320), {}),
    ("bfloat16", None, (6, 130, 226), {}),
    ("bfloat16", False, (5, 360, 640), {}),  # odd T: HF repeats the last frame
    ("float32", False, (4, 100, 1000), {"max_pixels": 200_000}),
]


@pytest.mark.parametrize("dtype,device_norm,shape,kwargs", CASES)
def test_video_equals_vllm_processor(tiny, dtype, device_norm, shape, kwargs):
    extra = {} if device_norm is None else {"mm_device_do_normalize": device_norm}
    cfg = model_config(tiny, dtype=dtype, **extra)
    ref, mine = processors(cfg, "cpu")
    data = {"video": [video_item(*shape, seed=1)]}
    assert_same(apply(mine, PROMPT.format(VIDEO), data, kwargs, path="mmprep"), apply(ref, PROMPT.format(VIDEO), data, kwargs))


@pytest.mark.parametrize("dtype,device_norm", [("float32", None), ("bfloat16", False)])
def test_images_and_video_together_equal_vllm_processor(tiny, dtype, device_norm):
    extra = {} if device_norm is None else {"mm_device_do_normalize": device_norm}
    cfg = model_config(tiny, dtype=dtype, limit_mm_per_prompt={"image": 3, "video": 1}, **extra)
    ref, mine = processors(cfg, "cpu")
    pil = Image.fromarray(frames(1, 300, 451, 7)[0])
    chw = torch.from_numpy(frames(1, 97, 61, 8)[0]).permute(2, 0, 1).contiguous()  # what mmprep's connector gives
    data = {"image": [pil, chw, Image.fromarray(frames(1, 56, 56, 9)[0])], "video": [video_item(4, 120, 160, 3)]}
    prompt = PROMPT.format(IMAGE * 3 + VIDEO)
    assert_same(apply(mine, prompt, data, path="mmprep"), apply(ref, prompt, data))


@pytest.mark.parametrize("dtype,device_norm,shape", [("bfloat16", None, (8, 240, 320)), ("float32", False, (5, 130, 226)),
                                                     ("bfloat16", None, (2, 720, 1280))])
def test_qwen3_vl_video_and_images_equal_vllm_processor(tiny3, dtype, device_norm, shape):
    """Qwen3-VL: its processor calls HF per video (timestamps, budget over frames) and for images."""
    extra = {} if device_norm is None else {"mm_device_do_normalize": device_norm}
    cfg = model_config(tiny3, dtype=dtype, limit_mm_per_prompt={"image": 2, "video": 2}, **extra)
    ref, mine = processors(cfg, "cpu")
    assert type(ref).__name__ == "Qwen3VLMultiModalProcessor"
    data = {"video": [video_item(*shape, seed=11), video_item(4, 96, 160, seed=12)],
            "image": [Image.fromarray(frames(1, 200, 333, 13)[0]), Image.fromarray(frames(1, 64, 64, 14)[0])]}
    prompt = PROMPT.format(IMAGE * 2 + VIDEO * 2)
    assert_same(apply(mine, prompt, data, path="mmprep"), apply(ref, prompt, data))


def test_hook_leaves_vllm_cached_hf_processor_alone(tiny):
    cfg = model_config(tiny, dtype="float32")
    ref, mine = processors(cfg, "cpu")
    hf_ref, hf_mine = ref.info.get_hf_processor(), mine.info.get_hf_processor()
    assert hf_mine is not hf_ref and hf_mine is mine.info.get_hf_processor()  # one swapped copy, reused
    assert not isinstance(hf_ref.video_processor, hook._Pixels) and isinstance(hf_mine.video_processor, hook._Pixels)
    # vLLM's own code reads the HF class and attributes: still the HF class, same settings.
    assert isinstance(hf_mine.video_processor, type(hf_ref.video_processor))
    assert hf_mine.video_processor.size == hf_ref.video_processor.size
    assert hf_mine.image_processor.merge_size == hf_ref.image_processor.merge_size


def test_unsupported_filter_falls_back_to_hf_on_same_device(tiny):
    """A resample filter the kernels do not reproduce runs HF's own _preprocess: same answer."""
    cfg = model_config(tiny, dtype="float32", mm_processor_kwargs={"resample": 2})  # bilinear
    ref, mine = processors(cfg, "cpu")
    data = {"video": [video_item(4, 120, 160, 4)]}
    assert_same(apply(mine, PROMPT.format(VIDEO), data, path="hf"), apply(ref, PROMPT.format(VIDEO), data))


def tagged(item, source: bytes):
    """A video item whose frames tensor carries an mmprep identity, as mmprep's loader leaves it."""
    frames, meta = item
    return identity.tag(torch.from_numpy(frames.copy()), identity.digest(source, "video", meta["frames_indices"])), meta


def test_mmprep_media_identified_by_digest_not_pixels(tiny):
    """vLLM caches by item hash; mmprep items are identified by their digest (never by hashing pixels),
    client uuids still win, and the pixels are the same as without an identity."""
    cfg = model_config(tiny, dtype="float32")
    ref, mine = processors(cfg, "cpu")
    item = video_item(4, 120, 160, 6)
    a, b = tagged(item, b"clip A"), tagged(item, b"clip B")  # same pixels, different sources
    prompt = PROMPT.format(VIDEO)
    out_a, kw_a = apply(mine, prompt, {"video": [a]}, path="mmprep")
    out_b, kw_b = apply(mine, prompt, {"video": [b]}, path="mmprep")
    assert out_a["mm_hashes"]["video"] == [identity.tag_of(a)]  # no kwargs: vLLM takes the id as the hash
    assert out_b["mm_hashes"]["video"] == [identity.tag_of(b)] != out_a["mm_hashes"]["video"]
    assert torch.equal(kw_a["pixel_values_videos"], kw_b["pixel_values_videos"])
    assert_same((out_a, kw_a), apply(ref, prompt, {"video": [item]}))
    # Processor kwargs still enter the hash (vLLM hashes them with the id), and a client's uuid wins.
    out_k, _ = apply(mine, prompt, {"video": [a]}, {"max_pixels": 100_000}, path="mmprep")
    assert out_k["mm_hashes"]["video"][0] not in (identity.tag_of(a), out_a["mm_hashes"]["video"][0])
    out_u, _ = apply(mine, prompt, {"video": [a]}, path="mmprep", uuids={"video": ["client-id"]})
    assert out_u["mm_hashes"]["video"] == ["client-id"]
    # Untagged media keep vLLM's own hashing: the same hash as vLLM's processor gives.
    assert apply(mine, prompt, {"video": [item]}, path="mmprep")[0]["mm_hashes"] == apply(
        ref, prompt, {"video": [item]})[0]["mm_hashes"]


def test_processor_cache_reparses_video_tensors_untouched(tiny):
    """With vLLM's processor cache on, cache-miss items are parsed a second time. vLLM 0.26 turned a bare
    video tensor into numpy there (GPU frames: a 400 for every video request); mmprep's parser keeps the
    tensor itself, as 0.32 does, and the cached processor still equals vLLM's."""
    from vllm.multimodal.cache import MultiModalProcessorOnlyCache

    cfg = model_config(tiny, dtype="float32", mm_processor_cache_gb=1)
    ref, mine = processors(cfg, "cpu")
    t = torch.from_numpy(video_item(4, 120, 160, 8)[0].copy())
    video, meta = mine.info.get_data_parser()._get_video_with_metadata(t)
    assert video is t and meta is None
    cache = MultiModalProcessorOnlyCache(cfg)
    item = tagged(video_item(4, 120, 160, 8), b"clip C")
    prompt = PROMPT.format(VIDEO)
    first = apply(mine, prompt, {"video": [item]}, path="mmprep", cache=cache)  # a miss: parsed twice
    second = apply(mine, prompt, {"video": [item]}, cache=cache)  # a hit: no processing at all
    want = apply(ref, prompt, {"video": [video_item(4, 120, 160, 8)]})
    assert_same(first, want)
    assert_same(second, want)


def test_digest_covers_source_and_decode_choices():
    base = identity.digest(b"abc", "video", [0, 4], "nvdec")
    assert base == identity.digest(b"abc", "video", [0, 4], "nvdec")
    for other in (identity.digest(b"abd", "video", [0, 4], "nvdec"), identity.digest(b"abc", "video", [0, 5], "nvdec"),
                  identity.digest(b"abc", "video", [0, 4], "cpu"), identity.digest(b"abc", "image", [0, 4], "nvdec")):
        assert other != base
    assert identity.tag_of((np.zeros(3), {})) is None and identity.tag_of(torch.zeros(3)) is None


def test_install_lists_models_and_is_idempotent():
    hook.uninstall()
    try:
        first = hook.install()
        assert {"Qwen2-VL", "Qwen2.5-VL", "Qwen3-VL"} <= set(first)
        assert hook.install() == first
        from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration as M

        assert M._processor_factory.info.__name__ == "MmprepQwen2VLProcessingInfo"
        assert M._processor_factory.processor.__name__ == "MmprepQwen2VLMultiModalProcessor"
    finally:
        hook.uninstall()
    assert M._processor_factory.info.__name__ == "Qwen2VLProcessingInfo"
    assert M._processor_factory.processor.__name__ == "Qwen2VLMultiModalProcessor"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,device_norm,shape,kwargs", CASES)
def test_gpu_video_equals_vllm_processor_on_gpu_frames(tiny, dtype, device_norm, shape, kwargs):
    """Fused kernels vs vLLM's own processor fed the same GPU frames (HF on the GPU): exact."""
    from mmprep import kernels

    assert kernels.fused(wait=True) is not None, "fused kernels failed to build"
    extra = {} if device_norm is None else {"mm_device_do_normalize": device_norm}
    cfg = model_config(tiny, dtype=dtype, **extra)
    ref, mine = processors(cfg, "cuda")
    item = video_item(*shape, seed=2)
    gpu = {"video": [(torch.from_numpy(item[0]).cuda(), item[1])]}  # frames as mmprep's loader leaves them
    out, kw = apply(mine, PROMPT.format(VIDEO), gpu, kwargs, path="mmprep")
    ref_out, ref_kw = apply(ref, PROMPT.format(VIDEO), gpu, kwargs)
    ref_kw = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in ref_kw.items()}
    assert_same((out, kw), (ref_out, ref_kw))


@pytest.mark.gpu
def test_gpu_frames_with_the_processor_cache_on(tiny):
    """vLLM's default deployment keeps the processor cache on: GPU frames tagged by mmprep's loader go
    through its cache-miss re-parse (0.26 called ``.numpy()`` on them) and then hit the cache."""
    from vllm.multimodal.cache import MultiModalProcessorOnlyCache

    cfg = model_config(tiny, dtype="bfloat16", mm_processor_cache_gb=1)
    ref, mine = processors(cfg, "cuda")
    frames, meta = video_item(4, 120, 160, 9)
    gpu = identity.tag(torch.from_numpy(frames.copy()).cuda(), identity.digest(b"clip G", "video", [0, 1, 2, 3]))
    cache, prompt = MultiModalProcessorOnlyCache(cfg), PROMPT.format(VIDEO)
    first = apply(mine, prompt, {"video": [(gpu, meta)]}, path="mmprep", cache=cache)
    second = apply(mine, prompt, {"video": [(gpu, meta)]}, cache=cache)
    assert first[0]["mm_hashes"] == second[0]["mm_hashes"] == {"video": [identity.tag_of(gpu)]}
    assert torch.equal(first[1]["pixel_values_videos"], second[1]["pixel_values_videos"])
    assert first[1]["video_grid_thw"].tolist() == apply(ref, prompt, {"video": [(frames, meta)]})[1]["video_grid_thw"].tolist()


@pytest.mark.gpu
def test_gpu_video_vs_vllm_cpu_processor_same_tokens(tiny):
    """GPU vs vLLM's CPU processor: same prompt and grid. Pixels are not compared for equality: HF itself
    resizes uint8 differently on the CPU (integer weights, rounding between the passes) and on the GPU
    (measured on an H200, 2026-11-28: up to 28 levels at hard edges of this content). The exact pixel
    check is the same-device one above; the size of the cross-device difference is reported."""
    cfg = model_config(tiny, dtype="float32")
    ref, mine = processors(cfg, "cuda")
    item = video_item(8, 240, 320, seed=5)
    out, kw = apply(mine, PROMPT.format(VIDEO), {"video": [(torch.from_numpy(item[0]).cuda(), item[1])]}, path="mmprep")
    ref_out, ref_kw = apply(ref, PROMPT.format(VIDEO), {"video": [item]})
    assert out["prompt_token_ids"] == ref_out["prompt_token_ids"]
    assert torch.equal(kw["video_grid_thw"], ref_kw["video_grid_thw"])
    std = mine.info.get_hf_processor().video_processor.image_std
    diff = (kw["pixel_values_videos"] - ref_kw["pixel_values_videos"]).abs()
    from .helpers import report

    report("gpu_processor_vs_cpu_processor", max_levels_lower_bound=float((diff * 255 * min(std)).max()),
           share_differing=float((diff > 0).float().mean()), median=float(diff.median()))
