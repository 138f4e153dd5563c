"""``VLLM_MEDIA_CONNECTOR=mmprep``: vLLM's media connector with nvJPEG images and mmprep video.

Fetching (http, data URLs, local files, the media cache) is vLLM's own; only decoding changes.
Images become (3,H,W) uint8 tensors on the decode device (PIL only where vLLM keeps a non-RGB
``image_mode``); videos use the mmprep loader matching the model's vLLM sampler.
"""

from __future__ import annotations

from typing import Any

from vllm.multimodal.media import MediaConnector
from vllm.multimodal.media.base import MediaWithBytes
from vllm.multimodal.media.image import ImageMediaIO
from vllm.multimodal.media.video import VideoMediaIO
from vllm.multimodal.video import get_video_loader_backend_for_processor

import vllm.envs as envs

from ..config import settings
from ..image import decode_images
from . import identity
from .loader import SAMPLERS

__all__ = ["MmprepImageMediaIO", "MmprepMediaConnector"]


class MmprepImageMediaIO(ImageMediaIO):
    """``ImageMediaIO`` whose ``load_bytes`` decodes with ``mmprep.decode_images`` (nvJPEG on a GPU)."""

    def __init__(self, image_mode: str | None = "RGB", **kwargs: Any) -> None:
        self.device = kwargs.pop("device", "auto")
        super().__init__(image_mode=image_mode, **kwargs)

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        if self.image_mode != "RGB":  # keeping alpha or another mode is PIL's job
            return super().load_bytes(data)
        limit = envs.VLLM_MAX_IMAGE_PIXELS
        max_pixels = min(limit, settings().max_image_pixels) if limit > 0 else settings().max_image_pixels
        from ..service import shared_for

        svc, gpu = shared_for(self.device)
        if svc is not None:  # decoded by a service worker (on its GPU), opened here
            image = svc.decode_image(data, gpu=gpu, max_pixels=max_pixels,
                                     rgba_background=self.rgba_background_color)
        else:
            (image,) = decode_images(
                [data], device=self.device, max_pixels=max_pixels, rgba_background=self.rgba_background_color
            )
        if image.shape[-1] in (1, 3, 4):  # vLLM would read a (3,H,W) this narrow as HWC
            return super().load_bytes(data)
        # vLLM identifies the image by this digest instead of hashing its pixels
        identity.tag(image, identity.digest(data, "image", image.device.type, tuple(image.shape),
                                            self.rgba_background_color))
        return MediaWithBytes(image, data)


def _video_backend(video_processor: str | None) -> str:
    """The mmprep loader for the model's vLLM sampler (uniform when the model has none)."""
    sampler = get_video_loader_backend_for_processor(video_processor) or "opencv"
    return SAMPLERS.get(sampler, SAMPLERS["opencv"]) if not sampler.startswith("mmprep") else sampler


class MmprepMediaConnector(MediaConnector):
    """vLLM's HTTP/data/file connector, decoding images and videos with mmprep."""

    def _image_io(self, image_mode: str | None) -> MmprepImageMediaIO:
        return MmprepImageMediaIO(**({"image_mode": image_mode} | self.media_io_kwargs.get("image", {})))

    def _video_io(self, image_mode: str | None, video_processor: str | None) -> VideoMediaIO:
        kwargs = dict(self.media_io_kwargs.get("video", {}))
        kwargs.setdefault("video_backend", _video_backend(video_processor))
        return VideoMediaIO(self._image_io(image_mode), **kwargs)

    def fetch_image(self, image_url: str, *, image_mode: str | None = "RGB"):
        return self.load_from_url(image_url, self._image_io(image_mode), fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    async def fetch_image_async(self, image_url: str, *, image_mode: str | None = "RGB"):
        return await self.load_from_url_async(
            image_url, self._image_io(image_mode), fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT
        )

    def fetch_video(self, video_url: str, *, image_mode: str | None = "RGB", video_processor: str | None = None):
        return self.load_from_url(
            video_url, self._video_io(image_mode, video_processor), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT
        )

    async def fetch_video_async(
        self, video_url: str, *, image_mode: str | None = "RGB", video_processor: str | None = None
    ):
        return await self.load_from_url_async(
            video_url, self._video_io(image_mode, video_processor), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT
        )
