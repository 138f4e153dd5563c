"""Errors raised for bad media: one family, all ``ValueError``s, each naming its cause."""

from __future__ import annotations

__all__ = [
    "MediaError",
    "EmptyMediaError",
    "CorruptMediaError",
    "NoVideoStreamError",
    "UnsupportedCodecError",
    "MediaTooLargeError",
    "TooManyFramesError",
]


class MediaError(ValueError):
    """Media that cannot be decoded. Catch this one class to reject a request cleanly."""


class EmptyMediaError(MediaError):
    """The source holds no bytes."""


class CorruptMediaError(MediaError):
    """The bytes are not a readable container or stream (random, truncated or damaged data)."""


class NoVideoStreamError(MediaError):
    """The container opened but holds no video stream."""


class UnsupportedCodecError(MediaError):
    """The codec, pixel format or bit depth is not supported by the requested backend."""


class MediaTooLargeError(MediaError):
    """Dimensions, pixel count or byte size are over the configured limits."""


class MediaTooSmallError(MediaError):
    """A side is under the configured minimum (``MMPREP_MIN_IMAGE_SIDE``): nothing a model can use."""


class TooManyFramesError(MediaError):
    """More frames would be returned than ``max_frames`` allows."""
