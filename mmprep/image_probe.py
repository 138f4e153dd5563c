"""Image facts from encoded bytes, without decoding pixels: format (vLLM's allowlist), size, mode, EXIF
orientation, and the size limits checked before any decoder runs. JPEG headers are parsed directly
(~4 us); other formats through PIL's lazy open. Both image decoders (PIL, nvJPEG) start from here.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from .errors import CorruptMediaError, MediaTooLargeError, MediaTooSmallError, UnsupportedCodecError

__all__ = ["ALLOWED_IMAGE_FORMATS", "ImageHeader", "inspect_image", "open_image"]

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

    @property
    def gpu_decodable(self) -> bool:
        """Baseline/progressive 8-bit JPEG in a colour model nvJPEG returns as RGB."""
        return self.format == "JPEG" and self.mode in ("RGB", "L")


def open_image(data: bytes):
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


_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive Huffman


def _exif_orientation(app1: bytes) -> int:
    """Orientation tag of an APP1 Exif payload (1 when absent or unreadable)."""
    if not app1.startswith(b"Exif\x00\x00") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for i in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        e = ifd + 2 + 12 * i
        if e + 12 > len(tiff):
            break
        if int.from_bytes(tiff[e : e + 2], order) == 0x0112:
            value = int.from_bytes(tiff[e + 8 : e + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_header(data: bytes) -> ImageHeader | None:
    """Fast path for JPEG: walk the marker segments up to the frame header (no PIL, ~10 us).
    None means anything unusual; the caller then asks PIL."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n, orientation, adobe = 2, len(data), 1, False
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        size = int.from_bytes(data[i + 2 : i + 4], "big")
        body = data[i + 4 : i + 2 + size]
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(body)
        elif marker == 0xEE and body.startswith(b"Adobe"):
            adobe = True
        elif marker in _SOF:
            if len(body) < 6 or body[0] != 8:
                return None
            h, w, comps = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
            mode = {1: "L", 3: "RGB"}.get(comps)
            if mode is None or (adobe and comps != 3) or h == 0:
                return None
            return ImageHeader("JPEG", w, h, mode, orientation)
        elif marker in (0xDA, 0xD9) or 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # scan before a frame header, or a coding PIL must judge
        i += 2 + size
    return None


def inspect_image(data: bytes, *, max_pixels: int, min_side: int = 2) -> ImageHeader:
    """Parse the header and enforce the size limits; no pixel data is decoded."""
    fast = _jpeg_header(data)
    if fast is not None:
        _check_size(fast.width, fast.height, max_pixels, min_side)
        return fast
    img = open_image(data)
    w, h = img.size
    _check_size(w, h, max_pixels, min_side)
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        orientation = 1
    return ImageHeader(img.format or "?", w, h, img.mode, orientation if 1 <= orientation <= 8 else 1)


def _check_size(w: int, h: int, max_pixels: int, min_side: int) -> None:
    if w * h > max_pixels:
        raise MediaTooLargeError(f"image is {w}x{h} = {w * h} pixels, over max_pixels={max_pixels}")
    if min(w, h) < min_side:
        raise MediaTooSmallError(f"image is {w}x{h}: a side under min_side={min_side} pixels holds no usable content")
