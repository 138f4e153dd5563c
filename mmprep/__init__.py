"""mmprep: multimodal preprocessing for VLM serving on the GPU's own engines.

Public API: ``decode_video`` -> ``Video``, ``decode_images`` -> list of (3,H,W) tensors,
``preprocess`` -> the HF processor's tensors; errors derive from ``MediaError`` (a ``ValueError``).
Importing mmprep needs no GPU and no driver; NVDEC is loaded on first use.
"""

from .errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    MediaTooSmallError,
    NoVideoStreamError,
    TooManyFramesError,
    UnsupportedCodecError,
)
from . import ipc
from .image import decode_images
from .sampling import sample_indices
from .transforms import preprocess
from .video import Video, decode_video

__version__ = "0.1.0"

__all__ = [
    "decode_video",
    "Video",
    "decode_images",
    "preprocess",
    "ipc",
    "sample_indices",
    "MediaError",
    "EmptyMediaError",
    "CorruptMediaError",
    "NoVideoStreamError",
    "UnsupportedCodecError",
    "MediaTooLargeError",
    "MediaTooSmallError",
    "TooManyFramesError",
]
