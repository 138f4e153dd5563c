"""Parity of mmprep.preprocess with the real HF processors (transformers), on the CPU."""

import numpy as np
import pytest
import torch

import mmprep
from mmprep.transforms import functional as Fn

from .helpers import SIZES, clip, rand_images, report, smooth_video

transformers = pytest.importorskip("transformers")
from transformers import CLIPImageProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor, SiglipImageProcessor  # noqa: E402
from transformers.models.qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402

def compare(name, ours, theirs, **info):
    d = (ours.float() - theirs.float()).abs()
    stats = {"mean": d.mean().item(), "p99": torch.quantile(d.flatten()[:2_000_000], 0.99).item(), "max": d.max().item()}
    report(name, **info, **stats)
    assert stats["max"] == 0.0, stats  # the torch path runs HF's own ops: bit-exact on the CPU
    return stats


def test_qwen2_vl_images_match_hf():
    imgs = rand_images(SIZES)
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt")
    ours = mmprep.preprocess(images=imgs, profile="qwen2_vl", device="cpu")
    assert ours.keys() == {"pixel_values", "image_grid_thw"}
    assert ours["pixel_values"].shape == hf["pixel_values"].shape and ours["pixel_values"].dtype == torch.float32
    assert torch.equal(ours["image_grid_thw"], hf["image_grid_thw"])
    compare("qwen2_vl_images_cpu", ours["pixel_values"], hf["pixel_values"])


@pytest.mark.parametrize("t", [1, 4, 9])
def test_qwen2_vl_videos_match_hf(t):
    vids = [smooth_video(t, 240, 320), smooth_video(t + 2, 181, 333, seed=5)]
    hf = Qwen2VLVideoProcessor()(videos=vids, return_tensors="pt", cap_pixels_per_frame=False)
    ours = mmprep.preprocess(videos=vids, profile="qwen2_5_vl", device="cpu")
    assert torch.equal(ours["video_grid_thw"], hf["video_grid_thw"])
    compare("qwen2_vl_videos_cpu", ours["pixel_values_videos"], hf["pixel_values_videos"], t=t)


def test_qwen3_vl_images_and_videos_match_hf():
    imgs = rand_images(SIZES[:3], seed=3)
    hf_img = Qwen2VLImageProcessor(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"shortest_edge": 65536, "longest_edge": 16777216})
    vids = [smooth_video(8, 360, 640), smooth_video(5, 242, 322)]
    hf_vid = Qwen3VLVideoProcessor()(videos=vids, return_tensors="pt", do_sample_frames=False, cap_pixels_per_frame=False)
    ours = mmprep.preprocess(images=imgs, videos=vids, profile="qwen3_vl", device="cpu")
    hf = hf_img(images=imgs, return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], hf["image_grid_thw"])
    assert torch.equal(ours["video_grid_thw"], hf_vid["video_grid_thw"])
    assert ours["pixel_values"].shape[1] == 3 * 2 * 16 * 16
    compare("qwen3_vl_images_cpu", ours["pixel_values"], hf["pixel_values"])
    compare("qwen3_vl_videos_cpu", ours["pixel_values_videos"], hf_vid["pixel_values_videos"])


@pytest.mark.parametrize("profile,proc", [("clip", CLIPImageProcessor), ("siglip", SiglipImageProcessor)])
def test_clip_style_profiles_match_hf(profile, proc):
    imgs = rand_images(SIZES + [(100, 150), (224, 224)], seed=9)
    hf = proc()(images=imgs, return_tensors="pt")["pixel_values"]
    ours = mmprep.preprocess(images=imgs, profile=profile, device="cpu")["pixel_values"]
    assert ours.shape == hf.shape == (len(imgs), 3, 224, 224)
    compare(f"{profile}_cpu", ours, hf)


def test_processor_kwargs_are_honoured():
    imgs = rand_images(SIZES[:3], seed=2)
    # mmprep keeps taking min_pixels/max_pixels; HF is called with the size= form that replaces them (5.23).
    kwargs = {"min_pixels": 200 * 28 * 28, "max_pixels": 400 * 28 * 28, "do_normalize": False}
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt", do_normalize=False,
                                 size={"shortest_edge": kwargs["min_pixels"], "longest_edge": kwargs["max_pixels"]})
    ours = mmprep.preprocess(images=imgs, device="cpu", **kwargs)
    assert torch.equal(ours["image_grid_thw"], hf["image_grid_thw"])
    compare("qwen2_vl_kwargs_cpu", ours["pixel_values"], hf["pixel_values"])
    size = {"shortest_edge": 64 * 28 * 28, "longest_edge": 128 * 28 * 28}
    hf = Qwen2VLVideoProcessor()(videos=[smooth_video(4, 480, 640)], return_tensors="pt", size=size, cap_pixels_per_frame=False)
    ours = mmprep.preprocess(videos=[smooth_video(4, 480, 640)], device="cpu", size=size)
    assert torch.equal(ours["video_grid_thw"], hf["video_grid_thw"])


def test_bfloat16_output_is_hf_cast():
    imgs = rand_images(SIZES[:2], seed=4)
    hf = Qwen2VLImageProcessor()(images=imgs, return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    ours = mmprep.preprocess(images=imgs, device="cpu", dtype=torch.bfloat16)["pixel_values"]
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, hf)


def test_decoded_video_and_images_feed_preprocess():
    v = mmprep.decode_video(clip("h264", frames=24), num_frames=6, device="cpu")
    hf = Qwen2VLVideoProcessor()(videos=[v.frames], return_tensors="pt", cap_pixels_per_frame=False)
    ours = mmprep.preprocess(videos=[v], device="cpu")
    assert torch.equal(ours["video_grid_thw"], hf["video_grid_thw"])
    compare("qwen2_vl_decoded_video_cpu", ours["pixel_values_videos"], hf["pixel_values_videos"])


def test_bad_arguments_name_the_choices():
    img = rand_images([(64, 64)])
    with pytest.raises(ValueError, match="profile must be one of"):
        mmprep.preprocess(images=img, profile="llava9")
    with pytest.raises(ValueError, match="unknown processor kwarg 'min_pixel'"):
        mmprep.preprocess(images=img, device="cpu", min_pixel=5)
    with pytest.raises(ValueError, match="dtype must be"):
        mmprep.preprocess(images=img, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="no video processor"):
        mmprep.preprocess(videos=[smooth_video(2, 64, 64)], profile="clip", device="cpu")


def test_smart_resize_matches_hf():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(x) for x in rng.integers(8, 5000, 2))
        if max(h, w) / min(h, w) > 200:
            continue
        assert Fn.smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280) == smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280)
