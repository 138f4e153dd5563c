"""decode_images on the CPU: vLLM/PIL semantics for formats, orientation, modes, hostile input."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import mmprep

from .helpers import pil_reference
from .images import formats, hostile, jpeg_with_orientation


@pytest.mark.parametrize("name", sorted(formats()))
def test_formats_match_pil_semantics(name):
    data = formats()[name]
    (img,) = mmprep.decode_images([data], device="cpu")
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    assert np.array_equal(img.permute(1, 2, 0).numpy(), pil_reference(data))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation):
    data = jpeg_with_orientation(orientation)
    (img,) = mmprep.decode_images([data], device="cpu")
    ref = pil_reference(data)
    assert img.shape[1:] == ref.shape[:2]
    assert np.array_equal(img.permute(1, 2, 0).numpy(), ref)


def test_alpha_composited_on_chosen_background():
    data = formats()["png_rgba"]
    (img,) = mmprep.decode_images([data], device="cpu", rgba_background=(0, 0, 255))
    assert np.array_equal(img.permute(1, 2, 0).numpy(), pil_reference(data, (0, 0, 255)))
    assert tuple(img[:, 60, 10].tolist()) == (0, 0, 255)  # fully transparent pixel -> background


@pytest.mark.parametrize("name", sorted(hostile()))
def test_bad_images_raise_media_error(name):
    data, err = hostile()[name]
    with pytest.raises(mmprep.MediaError) as e:
        mmprep.decode_images([formats()["png"], data], device="cpu")
    assert type(e.value).__name__ == err, str(e.value)
    assert str(e.value).startswith("image 1:")


def test_pixel_limit_checked_before_decode():
    big = formats()["png"]
    with pytest.raises(mmprep.MediaTooLargeError, match="max_pixels"):
        mmprep.decode_images([big], device="cpu", max_pixels=100)


def test_arguments_validated():
    with pytest.raises(TypeError, match="list"):
        mmprep.decode_images(formats()["png"], device="cpu")
    with pytest.raises(ValueError, match="rgba_background"):
        mmprep.decode_images([formats()["png"]], device="cpu", rgba_background=(0, 0, 256))
    with pytest.raises(ValueError, match="device must be"):
        mmprep.decode_images([formats()["png"]], device="tpu")


def test_decoded_images_feed_preprocess():
    from transformers import Qwen2VLImageProcessor

    datas = [formats()["jpeg"], formats()["png_rgba"], jpeg_with_orientation(6)]
    imgs = mmprep.decode_images(datas, device="cpu")
    ours = mmprep.preprocess(images=imgs, device="cpu")
    hf = Qwen2VLImageProcessor()(images=[Image.fromarray(pil_reference(d)) for d in datas], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], hf["image_grid_thw"])
    assert (ours["pixel_values"] - hf["pixel_values"]).abs().max().item() == 0.0


def test_fast_jpeg_header_agrees_with_pil():
    from mmprep.image_probe import _jpeg_header

    cases = {**{f"o{o}": jpeg_with_orientation(o) for o in range(1, 9)}, **{k: v for k, v in formats().items() if k.startswith("jpeg")}}
    for name, data in cases.items():
        fast = _jpeg_header(data)
        img = Image.open(io.BytesIO(data))
        if img.mode not in ("RGB", "L"):
            assert fast is None, name  # CMYK goes to PIL
            continue
        assert fast is not None, name
        assert (fast.width, fast.height, fast.mode) == (img.width, img.height, img.mode), name
        assert fast.orientation == (img.getexif().get(0x0112) or 1), name


def test_pixel_limit_is_mmprep_own_check():
    """A 4000x4000 header is far under PIL's bomb limit: only mmprep's max_pixels can refuse it."""
    from .images import png_header_only

    with pytest.raises(mmprep.MediaTooLargeError, match="max_pixels=10000000"):
        mmprep.decode_images([png_header_only(4000, 4000)], device="cpu", max_pixels=10_000_000)
