"""Encoded test images made with PIL: formats, EXIF orientations, colour modes, hostile cases."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def pattern(h: int = 96, w: int = 128) -> np.ndarray:
    """An asymmetric RGB pattern, so a wrong flip or rotation shows."""
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.stack([(xs * 255 // max(w - 1, 1)), (ys * 255 // max(h - 1, 1)), ((xs + 2 * ys) % 256)], -1).astype(np.uint8)
    img[: h // 4, : w // 4] = (255, 0, 0)
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def jpeg(h=96, w=128, quality=95, **kw) -> bytes:
    return encode(Image.fromarray(pattern(h, w)), "JPEG", quality=quality, **kw)


def jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(exif=exif.tobytes())


def formats() -> dict[str, bytes]:
    rgb = Image.fromarray(pattern())
    rgba = rgb.convert("RGBA")
    alpha = np.zeros(pattern().shape[:2], np.uint8)
    alpha[:, 64:] = 255
    alpha[:48, :32] = 128
    rgba.putalpha(Image.fromarray(alpha))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    return {
        "jpeg": jpeg(),
        "jpeg_gray": encode(rgb.convert("L"), "JPEG", quality=95),
        "jpeg_cmyk": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "jpeg_progressive": jpeg(progressive=True),
        "png": encode(rgb, "PNG"),
        "png_rgba": encode(rgba, "PNG"),
        "png_palette_transparent": encode(pal, "PNG", transparency=0),
        "png_gray": encode(rgb.convert("L"), "PNG"),
        "webp": encode(rgb, "WEBP", lossless=True),
        "gif": encode(pal, "GIF"),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
    }


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w``x``h`` (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def hostile() -> dict[str, tuple[bytes, str]]:
    good = jpeg(480, 640)
    rng = np.random.default_rng(3)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\nshowpage\n%%EOF\n"
    return {
        "empty": (b"", "EmptyMediaError"),
        "random": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "CorruptMediaError"),
        "truncated_jpeg": (good[: len(good) // 2], "CorruptMediaError"),
        "one_by_one": (encode(Image.new("RGB", (1, 1)), "PNG"), "MediaTooSmallError"),
        "one_by_fifty": (encode(Image.new("RGB", (1, 50)), "JPEG"), "MediaTooSmallError"),
        "bomb_header_30000": (png_header_only(30000, 30000), "MediaTooLargeError"),
        "unsupported_format_eps": (eps, "UnsupportedCodecError"),
        "text": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "CorruptMediaError"),
    }
