"""Image header inspection and CPU decode with PIL (pillow-simd when installed), vLLM's semantics.

Like vLLM's ImageMediaIO: the serving allowlist of formats, a pixel limit checked before any
pixel is decoded, EXIF orientation applied, palette/grayscale/CMYK converted to RGB, and
transparency composited over ``rgba_background`` (white by default).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CorruptMediaError, MediaTooLargeError, UnsupportedCodecError

__all__ = ["ALLOWED_IMAGE_FORMATS", "ImageHeader", "inspect_image", "decode_image_cpu"]

# vLLM 0.32's serving allowlist (vllm.multimodal.image.ALLOWED_IMAGE_FORMATS).
ALLOWED_IMAGE_FORMATS = (
    "AVIF", "BLP", "BMP", "CUR", "DCX", "DDS", "DIB", "FITS", "FLI", "FTEX", "GBR", "GIF", "ICNS", "ICO", "IM",
    "IMT", "IPTC", "JPEG", "JPEG2000", "MCIDAS", "MSP", "PCD", "PCX", "PIXAR", "PNG", "PPM", "PSD", "QOI", "SGI",
    "SPIDER", "SUN", "TGA", "TIFF", "WEBP", "XBM", "XPM", "XVTHUMB",
)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read without decoding pixels."""

    format: str
    width: int
    height: int
    """Stored size (before EXIF orientation)."""
    mode: str
    orientation: int
    """EXIF orientation tag, 1 (none) to 8."""
    has_transparency: bool

    @property
    def gpu_decodable(self) -> bool:
        """Baseline/progressive 8-bit JPEG in a colour model nvJPEG returns as RGB."""
        return self.format == "JPEG" and self.mode in ("RGB", "L")


def _open(data: bytes):
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=ALLOWED_IMAGE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise MediaTooLargeError(f"image header declares a decompression bomb: {e}") from e
        except Image.UnidentifiedImageError as e:
            try:
                fmt = Image.open(io.BytesIO(data)).format
            except Exception:
                fmt = None
            if fmt:
                raise UnsupportedCodecError(
                    f"image format {fmt} is not accepted; allowed: {', '.join(ALLOWED_IMAGE_FORMATS)}"
                ) from e
            raise CorruptMediaError(f"not a recognised image ({len(data)} bytes)") from e
        except Exception as e:
            raise CorruptMediaError(f"unreadable image header ({type(e).__name__}: {e})") from e


def inspect_image(data: bytes, *, max_pixels: int, min_side: int = 2) -> ImageHeader:
    """Parse the header and enforce the size limits; no pixel data is decoded."""
    img = _open(data)
    w, h = img.size
    if w * h > max_pixels:
        raise MediaTooLargeError(f"image is {w}x{h} = {w * h} pixels, over max_pixels={max_pixels}")
    if min(w, h) < min_side:
        raise MediaTooLargeError(f"image is {w}x{h}: a side under min_side={min_side} pixels holds no usable content")
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        orientation = 1
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in getattr(img, "info", {})
    return ImageHeader(img.format or "?", w, h, img.mode, orientation if 1 <= orientation <= 8 else 1, has_alpha)


def decode_image_cpu(data: bytes, *, background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """Decode with PIL to (3,H,W) uint8 RGB, oriented and composited as vLLM does."""
    from PIL import Image, ImageOps

    img = _open(data)
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
    except MediaTooLargeError:
        raise
    except Exception as e:  # truncated data, bad huffman tables, ...
        raise CorruptMediaError(f"{img.format or 'image'} decode failed ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)
