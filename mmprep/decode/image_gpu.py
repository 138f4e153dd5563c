"""JPEG decode on the GPU with nvJPEG (through torchvision), batched, EXIF orientation applied."""

from __future__ import annotations

import functools
import logging
import warnings

import torch

logger = logging.getLogger("mmprep.nvjpeg")

__all__ = ["nvjpeg_available", "decode_jpegs_gpu", "apply_orientation", "complete_jpeg"]


@functools.lru_cache(maxsize=1)
def nvjpeg_available() -> bool:
    """True when CUDA and torchvision's GPU JPEG decoder are usable."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as e:
        logger.debug("torchvision nvJPEG unavailable: %s", e)
        return False
    return True


def complete_jpeg(data: bytes) -> bool:
    """Whether the stream ends with an EOI marker (truncated files go to PIL, which names the fault)."""
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def apply_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C,H,W) image as PIL's ``ImageOps.exif_transpose`` would show it for EXIF ``orientation``."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(img, k=-1, dims=(-2, -1))
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(img, k=1, dims=(-2, -1))
    return img


def decode_jpegs_gpu(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEGs in one nvJPEG batch; an image nvJPEG rejects comes back as None (caller uses PIL)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # read-only bytes: nvJPEG only reads them, so no copy is made
        warnings.simplefilter("ignore", UserWarning)
        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
    try:
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        return list(out)
    except Exception as e:
        logger.debug("nvJPEG batch failed (%s); decoding one by one", e)
    results: list[torch.Tensor | None] = []
    for t in tensors:
        try:
            results.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except Exception:
            results.append(None)
    return results
