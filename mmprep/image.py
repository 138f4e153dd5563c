"""``decode_images``: encoded images -> (3,H,W) uint8 RGB tensors, JPEGs on nvJPEG when it can."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .config import settings
from .device import parse_device
from .decode.image_cpu import decode_image_cpu
from .image_probe import inspect_image
from .decode.image_gpu import apply_orientation, complete_jpeg, decode_jpegs_gpu, jpeg_well_formed, nvjpeg_available
from .errors import MediaError
from .source import Source, read_source

logger = logging.getLogger("mmprep")

__all__ = ["decode_images"]


def _image_device(device: str | torch.device) -> torch.device:
    kind, index = parse_device(device)
    if kind == "auto":
        return torch.device("cuda") if nvjpeg_available() else torch.device("cpu")
    dev = torch.device(kind, index)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} needs CUDA; use device='auto' or 'cpu'")
    return dev


def _tag(i: int, e: MediaError) -> MediaError:
    err = type(e)(f"image {i}: {e}")
    err.__cause__ = e
    return err


def decode_images(
    sources: Sequence[Source],
    *,
    device: str | torch.device = "auto",
    max_pixels: int | None = None,
    rgba_background: tuple[int, int, int] = (255, 255, 255),
) -> list[torch.Tensor]:
    """Decode images to (3,H,W) uint8 RGB tensors on ``device``, with vLLM's image semantics.

    JPEGs (RGB or grayscale) decode in one nvJPEG batch on a CUDA device; other formats and JPEGs
    nvJPEG refuses (CMYK, truncated) decode with PIL on the CPU and are then uploaded. Limits are
    checked from the header before any pixel is decoded. Bad input raises ``MediaError`` naming
    the image index and the cause.
    """
    if isinstance(sources, (bytes, bytearray, memoryview, str)) or hasattr(sources, "read"):
        raise TypeError("sources must be a list of images; wrap a single image in a list")
    if not (isinstance(rgba_background, (tuple, list)) and len(rgba_background) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgba_background)):
        raise ValueError(f"rgba_background must be 3 integers in [0, 255], got {rgba_background!r}")
    cfg = settings()
    max_pixels = cfg.max_image_pixels if max_pixels is None else max_pixels
    dev = _image_device(device)
    datas, headers = [], []
    for i, src in enumerate(sources):
        try:
            data = read_source(src, max_bytes=cfg.max_bytes)
            headers.append(inspect_image(data, max_pixels=max_pixels, min_side=cfg.min_image_side))
        except MediaError as e:
            raise _tag(i, e) from e
        datas.append(data)
    out: list[torch.Tensor | None] = [None] * len(datas)
    if dev.type == "cuda":
        gpu_idx = [i for i, h in enumerate(headers)
                   if h.gpu_decodable and complete_jpeg(datas[i]) and jpeg_well_formed(datas[i])]
        if gpu_idx:
            decoded = decode_jpegs_gpu([datas[i] for i in gpu_idx], dev)
            for i, img in zip(gpu_idx, decoded):
                if img is not None and img.shape[1:] == (headers[i].height, headers[i].width):
                    out[i] = apply_orientation(img, headers[i].orientation)
    for i, img in enumerate(out):
        if img is None:
            try:
                cpu = decode_image_cpu(datas[i], background=tuple(rgba_background))
            except MediaError as e:
                raise _tag(i, e) from e
            out[i] = cpu.to(dev, non_blocking=True) if dev.type == "cuda" else cpu
    return out  # type: ignore[return-value]
