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


def _segment(data: bytes, marker: int) -> int:
    """Offset of the first ``marker`` segment (its 0xFF byte) in a JPEG's header."""
    i = 2
    while data[i + 1] != marker:
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return i


def _defects(good: bytes) -> dict[str, bytes]:
    dht, sof, sos = _segment(good, 0xC4), _segment(good, 0xC0), _segment(good, 0xDA)
    b = bytearray(good)
    over = bytearray(good)
    over[dht + 5 : dht + 21] = bytes([2] * 16)  # 2 codes of every length: more than the code space holds
    undefined_table = bytearray(good)
    undefined_table[sos + 6] = 0x33  # first component's DC/AC tables: 3, never defined
    bad_sampling = bytearray(good)
    bad_sampling[sof + 11] = 0x05  # first component: horizontal sampling 0
    stray = bytes(b[: sos + 40]) + b"\xff\xc4" + bytes(b[sos + 42 :])  # a table marker inside the scan data
    return {"huffman_over_code_space": bytes(over), "undefined_huffman_table": bytes(undefined_table),
            "zero_sampling_factor": bytes(bad_sampling), "marker_inside_scan": stray,
            "no_eoi": good[:-2], "second_frame_header": good[:sos] + good[sof : sof + 2 + int.from_bytes(
                good[sof + 2 : sof + 4], "big")] + good[sos:]}


def test_nvjpeg_gets_only_well_formed_jpegs():
    """Structures nvJPEG trusts (a damaged file crashed it on the GPU machine) are checked first; the
    rest go to PIL. Every encoder variant PIL writes passes; each single defect fails."""
    from mmprep.decode.image_gpu import jpeg_well_formed

    from .images import jpeg

    variants = {"baseline": jpeg(240, 320), "progressive": jpeg(240, 320, progressive=True),
                "optimized": jpeg(240, 320, optimize=True), "444": jpeg(240, 320, subsampling=0),
                "restart_markers": jpeg(240, 320, restart_marker_blocks=2), "exif": jpeg_with_orientation(6),
                "gray": mmprep_gray_jpeg()}
    for name, data in variants.items():
        assert jpeg_well_formed(data), name
    for name, bad in _defects(variants["baseline"]).items():
        assert not jpeg_well_formed(bad), name
    assert not jpeg_well_formed(b"") and not jpeg_well_formed(b"\xff\xd8\xff\xd9")


def mmprep_gray_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1))).save(buf, "JPEG")
    return buf.getvalue()
