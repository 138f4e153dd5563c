"""Reference transform ops in pure torch, exact to the HF (torchvision-backed) processors.

Each op mirrors what ``transformers``' TorchvisionBackend does, so that CPU results equal HF's on
CPU and CUDA results equal HF's on CUDA: bicubic antialiased resize of uint8 (native uint8 kernel
on CPU; float -> clamp -> round on GPU), float32 rescale/normalize as ``(x - mean/rs) / (std/rs)``,
and Qwen-VL's patch flattening.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "smart_resize",
    "smart_resize_video",
    "shortest_edge_size",
    "resize",
    "center_crop",
    "rescale_normalize",
    "patchify",
]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's target size: multiples of ``factor``, pixel count within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_video(
    num_frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen3-VL's video target size: the pixel budget counts frames too."""
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """CLIP-style resize target: the short side becomes ``shortest_edge``, aspect kept (floored)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """(..., C, H, W) uint8 -> (..., C, h, w) uint8, antialiased, as torchvision's ``resize``."""
    h, w = size
    if tuple(x.shape[-2:]) == (h, w):
        return x
    lead = x.shape[:-3]
    x4 = x.reshape(-1, *x.shape[-3:])
    if x4.device.type == "cpu" and x4.dtype == torch.uint8:
        out = F.interpolate(x4, size=(h, w), mode=mode, antialias=True, align_corners=False)
    else:
        out = F.interpolate(x4.float(), size=(h, w), mode=mode, antialias=True, align_corners=False)
        if x.dtype == torch.uint8:
            out = out.clamp_(0, 255).round_().to(torch.uint8)
    return out.reshape(*lead, *out.shape[-3:])


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Center crop (zero-padding first when the crop is larger), as HF's TorchvisionBackend."""
    ch, cw = size
    h, w = x.shape[-2:]
    if cw > w or ch > h:
        pad = [
            (cw - w) // 2 if cw > w else 0,
            (cw - w + 1) // 2 if cw > w else 0,
            (ch - h) // 2 if ch > h else 0,
            (ch - h + 1) // 2 if ch > h else 0,
        ]
        x = F.pad(x, pad, value=0)
        h, w = x.shape[-2:]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top : top + ch, left : left + cw]


def norm_constants(
    mean: tuple[float, ...], std: tuple[float, ...], rescale_factor: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (mean/rescale, std/rescale), computed exactly as HF fuses rescale into normalize."""
    m = torch.tensor(mean, device=device) * (1.0 / rescale_factor)
    s = torch.tensor(std, device=device) * (1.0 / rescale_factor)
    return m, s


def rescale_normalize(
    x: torch.Tensor,
    *,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """(..., C, H, W) -> float32: ``(x - mean/rs) / (std/rs)``, or ``x * rs``, or ``float(x)``."""
    if do_normalize:
        if do_rescale:
            m, s = norm_constants(mean, std, rescale_factor, x.device)
        else:
            m, s = torch.tensor(mean, device=x.device), torch.tensor(std, device=x.device)
        shape = (-1, 1, 1)
        return (x.to(torch.float32) - m.view(shape)) / s.view(shape)
    if do_rescale:
        return x * rescale_factor if x.is_floating_point() else x.to(torch.float32) * rescale_factor
    return x.to(torch.float32)


def patchify(frames: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, C, H, W) frames of one item -> (grid_t*grid_h*grid_w, C*tps*P*P) patches and (t, h, w) grid.

    An image is a single frame; it is repeated ``temporal_patch_size`` times, as HF's image
    processor does. A video is padded with copies of its last frame to a multiple of it.
    """
    t, c, h, w = frames.shape
    if t == 1:
        frames = frames.expand(temporal_patch_size, c, h, w)
        t = temporal_patch_size
    elif pad := -t % temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(pad, c, h, w)], dim=0)
        t += pad
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    p = frames.reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    p = p.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return p.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size), (gt, gh, gw)
