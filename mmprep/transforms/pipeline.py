"""``preprocess``: decoded images / videos -> exactly the tensors a VLM's HF processor returns.

Items are normalised to uint8 (T, C, H, W) frame tensors on one device; each is resized,
rescaled, normalised and patchified either by the fused CUDA kernel (csrc/preprocess.cu, one pass,
writing straight into the concatenated output) or by the reference torch ops in ``functional``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import kernels
from ..device import parse_device
from . import functional as Fn
from .profiles import ImageSettings, get_profile

__all__ = ["preprocess"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, torch.float32: torch.float32, torch.bfloat16: torch.bfloat16}


def _to_chw(img: Any) -> torch.Tensor:
    """One image -> (C,H,W) uint8. Tensors are CHW (torchvision's layout) unless their last dim is
    the only one of size 1/3; arrays and PIL images are HWC."""
    if isinstance(img, torch.Tensor):
        t = img
        if t.ndim == 2:
            t = t.unsqueeze(0)
        elif t.ndim == 3 and t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
            t = t.permute(2, 0, 1)
    else:
        try:
            from PIL import Image

            if isinstance(img, Image.Image):
                img = np.asarray(img.convert("RGB"))
        except ImportError:  # pragma: no cover - pillow ships with torchvision
            pass
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = arr[..., None]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"images must be (3,H,W) tensors, (H,W,3) arrays or PIL images, got shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {t.dtype}")
    return t


def _to_tchw(video: Any) -> torch.Tensor:
    """One video -> (T,C,H,W) uint8: a ``mmprep.Video``, a (T,H,W,3) or (T,3,H,W) tensor/array."""
    frames = getattr(video, "frames", video)
    if not isinstance(frames, torch.Tensor):
        frames = torch.from_numpy(np.ascontiguousarray(np.asarray(frames)))
    if frames.ndim != 4:
        raise ValueError(f"videos must be (T,H,W,3) or (T,3,H,W), got shape {tuple(frames.shape)}")
    if frames.shape[1] != 3 and frames.shape[-1] == 3:
        frames = frames.permute(0, 3, 1, 2)
    if frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"videos must be uint8 with 3 channels, got {tuple(frames.shape)} {frames.dtype}")
    return frames


def _target_size(s: ImageSettings, t: int, h: int, w: int) -> tuple[int, int]:
    if not s.do_resize:
        return h, w
    if s.resize == "smart":
        return Fn.smart_resize(h, w, s.factor, s.min_pixels, s.max_pixels)
    if s.resize == "smart_video":
        return Fn.smart_resize_video(t, h, w, s.temporal_patch_size, s.factor, s.min_pixels, s.max_pixels)
    if s.resize == "shortest_edge":
        return Fn.shortest_edge_size(h, w, s.shortest_edge)
    return s.height, s.width


def _norm_mode(s: ImageSettings) -> int:
    return 0 if s.do_normalize else (1 if s.do_rescale else 2)


def patch_items(frames_list: list[torch.Tensor], s: ImageSettings, dtype: torch.dtype, device: torch.device, use_kernel: bool):
    """Qwen-VL layout: (sum of patches, C*tps*P*P) and (N,3) grid_thw (the vLLM processor hook uses it too)."""
    plans = []
    rows = 0
    for fr in frames_list:
        t, _, h, w = fr.shape
        rh, rw = _target_size(s, t, h, w)
        if rh % s.factor or rw % s.factor:
            raise ValueError(f"resized size {rw}x{rh} must be a multiple of patch_size*merge_size={s.factor}")
        tp = s.temporal_patch_size
        gt = 1 if t == 1 else -(-t // tp)
        grid = (gt, rh // s.patch_size, rw // s.patch_size)
        plans.append((fr, rh, rw, grid, rows))
        rows += grid[0] * grid[1] * grid[2]
    cols = 3 * s.temporal_patch_size * s.patch_size * s.patch_size
    grid_thw = torch.tensor([p[3] for p in plans], dtype=torch.long)
    kern = kernels.fused() if use_kernel else None
    if kern is not None:
        out = torch.empty((rows, cols), dtype=dtype, device=device)
        mean, std = _kernel_norm(s, device)
        mode = _norm_mode(s)
        for fr, rh, rw, grid, start in plans:
            n = grid[0] * grid[1] * grid[2]
            kernels.preprocess(
                kern, fr, out[start : start + n], height=rh, width=rw, layout=kernels.PATCHES, norm_mode=mode,
                mean=mean, std=std, rescale=s.rescale_factor, weights=_weights(kern, fr, rh, rw),
                patch=s.patch_size, merge=s.merge_size, temporal=s.temporal_patch_size,
            )
        return out, grid_thw
    parts = []
    for fr, rh, rw, _, _ in plans:
        x = Fn.resize(fr, (rh, rw))
        x = Fn.rescale_normalize(x, do_rescale=s.do_rescale, rescale_factor=s.rescale_factor, do_normalize=s.do_normalize, mean=s.image_mean, std=s.image_std)
        parts.append(Fn.patchify(x, s.patch_size, s.merge_size, s.temporal_patch_size)[0])
    return torch.cat(parts, dim=0).to(dtype), grid_thw


def _nchw_items(frames_list: list[torch.Tensor], s: ImageSettings, dtype: torch.dtype, device: torch.device, use_kernel: bool) -> torch.Tensor:
    """CLIP/SigLIP layout: (N, 3, crop_h, crop_w) (or the resized size without a crop)."""
    outs = []
    kern = kernels.fused() if use_kernel else None
    if kern is not None:
        mean, std = _kernel_norm(s, device)
    for fr in frames_list:
        _, _, h, w = fr.shape
        rh, rw = _target_size(s, 1, h, w)
        ch, cw = (s.crop_height, s.crop_width) if s.do_center_crop else (rh, rw)
        if kern is not None:
            # HF pads first (when the crop is larger), then crops at int((size - crop) / 2).
            ph, pw = max(ch, rh), max(cw, rw)
            top = int((ph - ch) / 2.0) - (ch - rh) // 2 if ch > rh else int((rh - ch) / 2.0)
            left = int((pw - cw) / 2.0) - (cw - rw) // 2 if cw > rw else int((rw - cw) / 2.0)
            out = torch.empty((fr.shape[0], 3, ch, cw), dtype=dtype, device=device)
            kernels.preprocess(
                kern, fr, out, height=rh, width=rw, layout=kernels.NCHW, norm_mode=_norm_mode(s), mean=mean, std=std,
                rescale=s.rescale_factor, weights=_weights(kern, fr, rh, rw), crop=(top, left, ch, cw),
            )
            outs.append(out)
            continue
        x = Fn.resize(fr, (rh, rw))
        if s.do_center_crop:
            x = Fn.center_crop(x, (ch, cw))
        x = Fn.rescale_normalize(x, do_rescale=s.do_rescale, rescale_factor=s.rescale_factor, do_normalize=s.do_normalize, mean=s.image_mean, std=s.image_std)
        outs.append(x.to(dtype))
    return torch.cat(outs, dim=0)


_cache: dict[tuple, Any] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple, make) -> Any:
    """Small per-device constants (norm vectors, resize weight tables), built once and reused."""
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        hit = make()
        torch.cuda.current_stream(key[-1]).synchronize()  # visible to every stream from now on
        with _cache_lock:
            if len(_cache) > 512:
                _cache.clear()
            _cache[key] = hit
    return hit


def _kernel_norm(s: ImageSettings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    def make():
        if s.do_normalize and s.do_rescale:
            return Fn.norm_constants(s.image_mean, s.image_std, s.rescale_factor, device)
        return torch.tensor(s.image_mean, device=device), torch.tensor(s.image_std, device=device)

    return _cached(("norm", s.image_mean, s.image_std, s.rescale_factor, s.do_normalize and s.do_rescale, device), make)


def _weights(kern, frames: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """(wx, xspan, wy, yspan) for resizing ``frames`` to h x w (empty tables when no resize)."""
    dev = frames.device
    H, W = frames.shape[-2:]
    if (H, W) == (h, w):
        empty = _cached(("empty", dev), lambda: torch.empty(0, device=dev))
        return empty, empty, empty, empty
    wx, xs = _cached(("aa", w, W, dev), lambda: tuple(kern.aa_weights(w, W, frames)))
    wy, ys = _cached(("aa", h, H, dev), lambda: tuple(kern.aa_weights(h, H, frames)))
    return wx, xs, wy, ys


def _resolve_device(device: str | torch.device, items: list[torch.Tensor]) -> torch.device:
    kind, index = parse_device(device)
    if kind != "auto":
        return torch.device(kind, index)
    for t in items:
        if t.is_cuda:
            return t.device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def preprocess(
    images: Sequence[Any] | Any | None = None,
    videos: Sequence[Any] | Any | None = None,
    *,
    profile: str = "qwen2_vl",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = torch.float32,
    images_kwargs: dict[str, Any] | None = None,
    videos_kwargs: dict[str, Any] | None = None,
    use_kernel: bool = True,
    **processor_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Images and/or videos -> the HF processor's output for ``profile``, computed on ``device``.

    Qwen profiles return ``pixel_values`` + ``image_grid_thw`` and ``pixel_values_videos`` +
    ``video_grid_thw`` (flattened patches); ``clip``/``siglip`` return ``pixel_values`` (N,3,h,w).
    ``processor_kwargs`` (``min_pixels``, ``max_pixels``, ``size``, ``do_normalize`` ...) apply to
    both modalities, ``images_kwargs`` / ``videos_kwargs`` to one. ``dtype`` is float32 (HF's) or
    bfloat16. ``use_kernel=False`` forces the reference torch path.
    """
    try:
        out_dtype = _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}") from None
    prof = get_profile(profile)
    result: dict[str, torch.Tensor] = {}
    img_list = [] if images is None else [_to_chw(x) for x in (images if isinstance(images, (list, tuple)) else [images])]
    vid_list = [] if videos is None else [_to_tchw(v) for v in (videos if isinstance(videos, (list, tuple)) else [videos])]
    dev = _resolve_device(device, img_list + vid_list)
    kernel_ok = use_kernel and dev.type == "cuda"
    if img_list:
        s = prof.image.with_kwargs({**processor_kwargs, **(images_kwargs or {})})
        frames = [x.to(dev, non_blocking=True).unsqueeze(0) for x in img_list]
        if s.patch_size:
            result["pixel_values"], result["image_grid_thw"] = patch_items(frames, s, out_dtype, dev, kernel_ok)
        else:
            result["pixel_values"] = _nchw_items(frames, s, out_dtype, dev, kernel_ok)
    if vid_list:
        if prof.video is None:
            raise ValueError(f"profile {profile!r} has no video processor; video profiles: qwen2_vl, qwen2_5_vl, qwen3_vl")
        s = prof.video.with_kwargs({**processor_kwargs, **(videos_kwargs or {})})
        frames = [v.to(dev, non_blocking=True) for v in vid_list]
        result["pixel_values_videos"], result["video_grid_thw"] = patch_items(frames, s, out_dtype, dev, kernel_ok)
    return result
