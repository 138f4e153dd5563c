"""CPU image decode with PIL (pillow-simd when installed), vLLM's semantics.

Like vLLM's ImageMediaIO: the serving allowlist of formats, a pixel limit checked before any
pixel is decoded, EXIF orientation applied, palette/grayscale/CMYK converted to RGB, and
transparency composited over ``rgba_background`` (white by default).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CorruptMediaError, MediaTooLargeError, MediaTooSmallError
from ..image_probe import open_image

__all__ = ["decode_image_cpu"]


def decode_image_cpu(data: bytes, *, background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """Decode with PIL to (3,H,W) uint8 RGB, oriented and composited as vLLM does."""
    from PIL import Image, ImageOps

    img = open_image(data)
    try:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:
            pass
        img.load()
        if img.mode != "RGB":
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, tuple(background))
                canvas.paste(rgba, mask=rgba.split()[3])
                img = canvas
            else:
                img = img.convert("RGB")
        arr = np.asarray(img)
    except (MediaTooLargeError, MediaTooSmallError):
        raise
    except Exception as e:  # truncated data, bad huffman tables, ...
        raise CorruptMediaError(f"{img.format or 'image'} decode failed ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)
