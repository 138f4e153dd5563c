"""Video loaders for vLLM's ``VIDEO_LOADER_REGISTRY`` that decode with ``mmprep.decode_video``.

Each one keeps the frame sampling of a vLLM loader (uniform ``opencv``, ``qwen2_vl``, ``qwen3_vl``,
``opencv_dynamic``) by calling that loader's own ``_prepare_source`` /
``compute_frames_index_to_sample`` / ``create_hf_metadata``, so indices and metadata are what vLLM
would produce; only the decoding changes (NVDEC, only the GOPs holding sampled frames).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import torch

from ..probe import StreamInfo
from ..video import decode_video
from . import identity
from .media_cache import media_cache

__all__ = ["SAMPLERS", "OPTIONS", "make_loader", "sample_like_vllm"]

SAMPLERS: dict[str, str] = {
    "opencv": "mmprep",
    "qwen2_vl": "mmprep_qwen2_vl",
    "qwen3_vl": "mmprep_qwen3_vl",
    "opencv_dynamic": "mmprep_dynamic",
}
"""vLLM loader whose sampling is reused -> name of the mmprep loader registered for it."""

OPTIONS = {
    "device": "where to decode: 'auto' (NVDEC when possible, else CPU), 'cuda', 'cuda:N' or 'cpu' ('cpu' decodes in "
              "this process also when MMPREP_WORKERS hands the others to service workers)",
    "frames_on": "'auto' (default): 'device' where mmprep's processor hook takes them (Qwen samplers with "
                 "MMPREP_PROCESSOR on), else 'host'; 'device' keeps NVDEC frames on the GPU; 'host' copies them out",
}
"""mmprep's own ``--media-io-kwargs '{"video": {...}}'`` options, besides vLLM's sampling ones."""

_HOOKED_SAMPLERS = {"qwen2_vl", "qwen3_vl"}  # samplers of the models mmprep.vllm.processor covers
_IGNORED = {"backend"}  # a codec name meant for vLLM's own loaders; mmprep is the codec here
_FOREIGN = {"hw_decoders", "num_ffmpeg_threads", "seek_mode", "pool_size", "timeout_sec"}


def _defaults(fn) -> dict[str, Any]:
    sig = inspect.signature(fn)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def sample_like_vllm(sampler: str, target: tuple[float, float, float], kwargs: dict[str, Any],
                     st: StreamInfo) -> list[int]:
    """The frames vLLM's loader ``sampler`` picks from a probed stream (its pixel limit checked first).

    Module-level so that ``functools.partial`` of it pickles: service workers run it next to the decoder."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY
    from vllm.multimodal.video_decoders import VideoSourceMetadata, VideoTargetMetadata, check_frame_pixel_limit

    base = VIDEO_LOADER_REGISTRY.name2class[sampler]
    check_frame_pixel_limit(st.width, st.height)
    src = base._prepare_source(VideoSourceMetadata(st.num_frames, st.fps, st.duration))
    num_frames, fps, max_duration = target
    tgt = VideoTargetMetadata(num_frames=num_frames, fps=fps, max_duration=max_duration)
    return [int(i) for i in base.compute_frames_index_to_sample(source=src, target=tgt, **kwargs)]


def make_loader(base: type, sampler: str) -> type:
    """A subclass of vLLM loader ``base`` that decodes with mmprep; its defaults (e.g. fps=2) kept."""
    from vllm.multimodal.video_decoders import VideoSourceMetadata

    defaults = _defaults(base.load_bytes)
    suffix = getattr(base, "_sampling_suffix", "")

    class MmprepVideoLoader(base):  # type: ignore[misc, valid-type]
        __doc__ = f"mmprep decoding with the frame sampling of vLLM's {base.__name__}."

        @staticmethod
        def _hooked_processor() -> bool:
            """Whether the model behind this sampler gets mmprep's processor (else a CPU processor waits)."""
            from .processor import enabled

            return sampler in _HOOKED_SAMPLERS and enabled()

        @classmethod
        def load_bytes(cls, data: bytes, num_frames: int = defaults.get("num_frames", -1),
                       fps: float = defaults.get("fps", -1), max_duration: float = defaults.get("max_duration", 300),
                       frame_recovery: bool = False, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
            """Decode the frames ``base`` would sample; (frames, metadata) as vLLM's loaders return.

            ``frame_recovery`` is part of vLLM's signature; mmprep never drops a frame silently (a
            frame that fails to decode raises ``CorruptMediaError``), so there is nothing to recover."""
            device = kwargs.pop("device", "auto")
            frames_on = kwargs.pop("frames_on", "auto")
            if frames_on not in ("auto", "device", "host"):
                raise ValueError(f"frames_on must be 'auto', 'device' or 'host', got {frames_on!r}")
            if frames_on == "auto":
                frames_on = "device" if cls._hooked_processor() else "host"
            for k in _IGNORED:
                kwargs.pop(k, None)
            if foreign := sorted(_FOREIGN & kwargs.keys()):
                raise ValueError(
                    f"{', '.join(foreign)} is an option of another video backend; mmprep's options are "
                    f"{', '.join(OPTIONS)} (plus the sampling options num_frames, fps, max_duration)"
                )
            digests = identity.Digests(data)  # hashes the bytes at most once, for both uses below
            cache = media_cache()
            if cache is not None:  # the same bytes with the same options: the same frames
                key = digests("loader", sampler, num_frames, fps, max_duration, sorted(kwargs.items()), device,
                              frames_on)
                if (hit := cache.get(key)) is not None:
                    return hit
            # vLLM's own sampler, as a picklable callable: it also runs inside service workers.
            pick = functools.partial(sample_like_vllm, sampler, (num_frames, fps, max_duration), dict(kwargs))
            from ..service import shared_for

            svc, gpu = shared_for(device)
            if svc is not None:
                video = svc.decode_video(data, indices=pick, gpu=gpu)
            else:
                video = decode_video(data, indices=pick, device=device)
            frames: torch.Tensor | np.ndarray = video.frames
            if frames.device.type == "cpu":
                frames = frames.numpy()
            elif frames_on == "host":
                frames = frames.cpu().numpy()
            else:  # GPU frames: vLLM identifies them by this digest instead of hashing pixels
                identity.tag(frames, digests("video", sampler, video.indices, video.backend, video.rotation,
                                             tuple(frames.shape)))
            source = cls._prepare_source(VideoSourceMetadata(video.total_frames, video.fps, video.duration))
            meta = cls.create_hf_metadata(
                source=source, valid_frame_indices=list(video.indices), video_backend=f"mmprep{suffix}"
            )
            if cache is not None:
                cache.put(key, frames, meta)
            return frames, meta

    MmprepVideoLoader.__name__ = MmprepVideoLoader.__qualname__ = f"Mmprep{base.__name__}"
    return MmprepVideoLoader
