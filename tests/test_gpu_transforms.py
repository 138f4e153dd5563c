"""GPU: nvJPEG decode vs PIL, and preprocess (torch path and fused kernel) vs HF processors on cuda."""

import gc

import pytest
import torch

import mmprep
from mmprep.kernels import fused

from .helpers import SIZES, clip, pil_reference, rand_images, report, smooth_video
from .images import formats, hostile, jpeg, jpeg_with_orientation

pytestmark = pytest.mark.gpu

transformers = pytest.importorskip("transformers")
from transformers import CLIPImageProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, SiglipImageProcessor  # noqa: E402
from transformers.models.qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402


def stats(a, b):
    d = (a.float().cpu() - b.float().cpu()).abs()
    flat = d.flatten()
    return {"mean": d.mean().item(), "p99": torch.quantile(flat[:: max(1, flat.numel() // 4_000_000)], 0.99).item(), "max": d.max().item()}


def check(name, ours, theirs, **info):
    s = stats(ours, theirs)
    report(name, **info, **s)
    assert s["max"] == 0.0, s  # the kernels reproduce HF on the GPU operation by operation: exact
    return s


@pytest.fixture(scope="module", autouse=True)
def kernels_built():
    assert fused(wait=True) is not None, "nvcc is on the GPU machine: the fused kernels must build there"


def test_nvjpeg_matches_pil():
    for name, data in [("jpeg", formats()["jpeg"]), ("jpeg_gray", formats()["jpeg_gray"]), ("progressive", formats()["jpeg_progressive"]), ("1080p", jpeg(1080, 1920, quality=90))]:
        (img,) = mmprep.decode_images([data], device="cuda")
        ref = torch.from_numpy(pil_reference(data)).permute(2, 0, 1)
        assert img.is_cuda and img.shape == ref.shape
        s = stats(img, ref)
        report("nvjpeg_vs_pil", image=name, **s)
        assert s["mean"] <= 2.0


def test_nvjpeg_orientation_and_fallbacks():
    for o in range(1, 9):
        data = jpeg_with_orientation(o)
        (img,) = mmprep.decode_images([data], device="cuda")
        ref = torch.from_numpy(pil_reference(data)).permute(2, 0, 1)
        assert img.shape == ref.shape, o
        assert stats(img, ref)["mean"] <= 2.0, o
    for name in ("jpeg_cmyk", "png", "png_rgba", "webp", "gif", "tiff"):
        data = formats()[name]
        (img,) = mmprep.decode_images([data], device="cuda")
        assert img.is_cuda and torch.equal(img.cpu(), torch.from_numpy(pil_reference(data)).permute(2, 0, 1)), name


def test_hostile_images_on_cuda_leave_no_leak():
    bad = hostile()
    mmprep.decode_images([jpeg()], device="cuda")
    gc.collect()  # earlier tests' garbage, freed mid-test, once made memory fall below the baseline
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for _ in range(20):
        for data, err in bad.values():
            with pytest.raises(mmprep.MediaError):
                mmprep.decode_images([jpeg(), data], device="cuda")
    gc.collect()
    torch.cuda.synchronize()
    report("hostile_images_cuda", base=base, after=torch.cuda.memory_allocated())
    assert torch.cuda.memory_allocated() == base


@pytest.mark.parametrize("use_kernel", [False, True], ids=["torch", "kernel"])
def test_qwen2_vl_images_on_cuda_match_hf_cuda(use_kernel):
    imgs = [x.cuda() for x in rand_images(SIZES)]
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt", device="cuda")
    ours = mmprep.preprocess(images=imgs, device="cuda", use_kernel=use_kernel)
    assert ours["pixel_values"].is_cuda and torch.equal(ours["image_grid_thw"].cpu(), hf["image_grid_thw"].cpu())
    check("qwen2_vl_images_cuda", ours["pixel_values"], hf["pixel_values"], path="kernel" if use_kernel else "torch")


@pytest.mark.parametrize("use_kernel", [False, True], ids=["torch", "kernel"])
def test_videos_on_cuda_match_hf_cuda(use_kernel):
    vids = [smooth_video(9, 240, 320).cuda(), smooth_video(4, 181, 333, seed=5).cuda()]
    for profile, proc, extra in (("qwen2_vl", Qwen2VLVideoProcessor(), {}), ("qwen3_vl", Qwen3VLVideoProcessor(), {"do_sample_frames": False})):
        hf = proc(videos=vids, return_tensors="pt", device="cuda", cap_pixels_per_frame=False, **extra)
        ours = mmprep.preprocess(videos=vids, profile=profile, device="cuda", use_kernel=use_kernel)
        assert torch.equal(ours["video_grid_thw"].cpu(), hf["video_grid_thw"].cpu())
        check("videos_cuda", ours["pixel_values_videos"], hf["pixel_values_videos"], profile=profile, path="kernel" if use_kernel else "torch")


@pytest.mark.parametrize("profile,proc", [("clip", CLIPImageProcessor), ("siglip", SiglipImageProcessor)])
def test_clip_style_on_cuda(profile, proc):
    imgs = [x.cuda() for x in rand_images(SIZES + [(100, 150)], seed=9)]
    hf = proc()(images=imgs, return_tensors="pt", device="cuda")["pixel_values"]
    for use_kernel in (False, True):
        ours = mmprep.preprocess(images=imgs, profile=profile, device="cuda", use_kernel=use_kernel)["pixel_values"]
        assert ours.shape == hf.shape
        check(f"{profile}_cuda", ours, hf, path="kernel" if use_kernel else "torch")


def test_kernel_bf16_and_unnormalized():
    imgs = [x.cuda() for x in rand_images(SIZES[:3], seed=1)]
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt", device="cuda")["pixel_values"]
    ours = mmprep.preprocess(images=imgs, device="cuda", dtype="bfloat16")["pixel_values"]
    assert ours.dtype == torch.bfloat16
    check("kernel_bf16", ours, hf.to(torch.bfloat16))
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt", device="cuda", do_normalize=False)["pixel_values"]
    ours = mmprep.preprocess(images=imgs, device="cuda", do_normalize=False)["pixel_values"]
    check("kernel_rescale_only", ours, hf)


def test_nvdec_to_kernel_pipeline_matches_hf():
    data = clip("h264", width=1280, height=720, frames=48)
    v = mmprep.decode_video(data, num_frames=16, device="cuda")
    hf = Qwen2VLVideoProcessor()(videos=[v.frames], return_tensors="pt", device="cuda", cap_pixels_per_frame=False)
    ours = mmprep.preprocess(videos=[v], device="cuda")
    assert torch.equal(ours["video_grid_thw"].cpu(), hf["video_grid_thw"].cpu())
    check("nvdec_pipeline_cuda", ours["pixel_values_videos"], hf["pixel_values_videos"])
    imgs = mmprep.decode_images([jpeg(1080, 1920), jpeg(333, 517)], device="cuda")
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt", device="cuda")
    ours = mmprep.preprocess(images=imgs, device="cuda")
    check("nvjpeg_pipeline_cuda", ours["pixel_values"], hf["pixel_values"])


def test_kernel_keeps_order_across_mixed_image_sizes():
    """Runs of same-size images between other sizes: rows land in input order, values exact."""
    sizes = [(480, 640)] * 5 + [(242, 322)] + [(480, 640)] * 3 + [(1080, 1920)] * 2
    imgs = [x.cuda() for x in rand_images(sizes, seed=11)]
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt", device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        ours = mmprep.preprocess(images=imgs, device="cuda", dtype=dtype)
        assert torch.equal(ours["image_grid_thw"].cpu(), hf["image_grid_thw"].cpu())
        check("kernel_image_runs", ours["pixel_values"], hf["pixel_values"].to(dtype), dtype=str(dtype))
