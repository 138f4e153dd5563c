"""JPEG decode on the GPU with nvJPEG (through torchvision), batched, EXIF orientation applied."""

from __future__ import annotations

import functools
import logging
import re
import warnings

import torch

logger = logging.getLogger("mmprep.nvjpeg")

__all__ = ["nvjpeg_available", "decode_jpegs_gpu", "apply_orientation", "complete_jpeg", "jpeg_well_formed"]


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


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # skips stuffed 0xFF00 bytes and restart markers
_SOF_NVJPEG = {0xC0: False, 0xC1: False, 0xC2: True}  # baseline, extended, progressive (Huffman) -> progressive


def _huffman_ok(counts: bytes) -> bool:
    """Code lengths that fit the 16-bit code space (a malformed DHT breaks this; libjpeg rejects it)."""
    space = 1
    for c in counts:
        space = space * 2 - c
        if space < 0:
            return False
    return True


def jpeg_well_formed(data: bytes) -> bool:
    """Whether every segment parses and each scan uses only tables and components the stream defined.

    nvJPEG trusts these structures (a damaged file has crashed it on the GPU machine), libjpeg checks
    them and raises; so only streams that pass go to nvJPEG, the rest to PIL, which names the fault.
    Marker walk only: the entropy-coded data is not decoded, only searched for the next marker at C
    speed (~0.2 ms for a 1080p photo)."""
    if data[:2] != b"\xff\xd8":
        return False
    n, i = len(data), 2
    quant: set[int] = set()
    dc: set[int] = set()
    ac: set[int] = set()
    comps: dict[int, int] | None = None  # component id -> quantization table
    progressive, scans = False, 0
    while i + 2 <= n:
        if data[i] != 0xFF:
            return False
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0xD9:
            return scans > 0
        if i + 4 > n:
            return False
        size = int.from_bytes(data[i + 2 : i + 4], "big")
        if size < 2 or i + 2 + size > n:
            return False
        body = data[i + 4 : i + 2 + size]
        if m == 0xDB:  # DQT
            j = 0
            while j < len(body):
                pq, tq = body[j] >> 4, body[j] & 15
                if pq > 1 or tq > 3:
                    return False
                j += 1 + 64 * (1 + pq)
                quant.add(tq)
            if j != len(body):
                return False
        elif m == 0xC4:  # DHT
            j = 0
            while j < len(body):
                if j + 17 > len(body):
                    return False
                tc, th = body[j] >> 4, body[j] & 15
                counts = body[j + 1 : j + 17]
                if tc > 1 or th > 3 or sum(counts) > 256 or not _huffman_ok(counts):
                    return False
                j += 17 + sum(counts)
                (dc if tc == 0 else ac).add(th)
            if j != len(body):
                return False
        elif m in _SOF_NVJPEG:
            if comps is not None or len(body) < 6:
                return False
            nc = body[5]
            if body[0] != 8 or body[1:3] == b"\0\0" or body[3:5] == b"\0\0" or nc not in (1, 3) or len(body) != 6 + 3 * nc:
                return False
            comps = {}
            for k in range(nc):
                cid, hv, tq = body[6 + 3 * k : 9 + 3 * k]
                if not (1 <= hv >> 4 <= 4 and 1 <= hv & 15 <= 4) or tq > 3 or cid in comps:
                    return False
                comps[cid] = tq
            progressive = _SOF_NVJPEG[m]
        elif 0xC3 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            return False  # lossless, hierarchical or arithmetic coding: PIL's to judge
        elif m == 0xDA:  # SOS, then the entropy-coded data up to the next marker
            if comps is None or not body:
                return False
            ns = body[0]
            if not 1 <= ns <= 4 or len(body) != 4 + 2 * ns:
                return False
            ss, se = body[1 + 2 * ns], body[2 + 2 * ns]
            for k in range(ns):
                cid, tables = body[1 + 2 * k], body[2 + 2 * k]
                if cid not in comps or comps[cid] not in quant:
                    return False
                need_dc = not progressive or ss == 0
                need_ac = not progressive or ss > 0
                if (need_dc and tables >> 4 not in dc) or (need_ac and tables & 15 not in ac):
                    return False
            if not progressive and (ss != 0 or se != 63):
                return False
            nxt = _NEXT_MARKER.search(data, i + 2 + size)  # a stray marker inside the data shows here
            if nxt is None:
                return False
            scans += 1
            i = nxt.start()
            continue
        i += 2 + size
    return False


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
