"""mmprep: multimodal preprocessing for VLM serving on the GPU's own engines.

Public API: ``decode_video`` -> ``Video``; errors derive from ``MediaError`` (a ``ValueError``).
Importing mmprep needs no GPU and no driver; NVDEC is loaded on first use.
"""

from .errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    NoVideoStreamError,
    TooManyFramesError,
    UnsupportedCodecError,
)
from .sampling import sample_indices
from .video import Video, decode_video

__version__ = "0.1.0"

__all__ = [
    "decode_video",
    "Video",
    "sample_indices",
    "MediaError",
    "EmptyMediaError",
    "CorruptMediaError",
    "NoVideoStreamError",
    "UnsupportedCodecError",
    "MediaTooLargeError",
    "TooManyFramesError",
]
