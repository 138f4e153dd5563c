"""YUV -> RGB conversion in torch, on whatever device the planes live (NVDEC output on GPU).

Matches FFmpeg's swscale defaults used by the CPU backend (and by OpenCV, vLLM's default
loader): nearest-neighbour chroma upsampling, the stream's matrix (BT.601 when untagged),
limited ("TV") range unless the stream says full range.
"""

from __future__ import annotations

import torch

__all__ = ["KR_KB", "coefficients", "yuv420_to_rgb", "nv12_to_rgb"]

KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}


def coefficients(matrix: str) -> tuple[float, float, float, float]:
    """(Cr->R, Cb->G, Cr->G, Cb->B) multipliers of a YUV->RGB matrix."""
    try:
        kr, kb = KR_KB[matrix]
    except KeyError:
        raise ValueError(f"matrix must be one of {sorted(KR_KB)}, got {matrix!r}") from None
    kg = 1.0 - kr - kb
    return 2 * (1 - kr), -2 * kb * (1 - kb) / kg, -2 * kr * (1 - kr) / kg, 2 * (1 - kb)


def yuv420_to_rgb(
    y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *, matrix: str, full_range: bool, max_value: int = 255
) -> torch.Tensor:
    """(T,H,W) luma and (T,ceil(H/2),ceil(W/2)) chroma planes -> (T,H,W,3) uint8 RGB.

    ``max_value`` is the largest code of the input (255 for 8-bit, 65535 for P016-style
    MSB-aligned high bit depth); results are always 8-bit.
    """
    cr_r, cb_g, cr_g, cb_b = coefficients(matrix)
    t, h, w = y.shape
    scale = 255.0 / max_value
    yf = y.to(torch.float32) * scale
    uf = u.to(torch.float32) * scale - 128.0
    vf = v.to(torch.float32) * scale - 128.0
    if not full_range:
        yf = (yf - 16.0) * (255.0 / 219.0)
        uf = uf * (255.0 / 224.0)
        vf = vf * (255.0 / 224.0)
    uf = uf.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, :h, :w]
    vf = vf.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, :h, :w]
    out = torch.empty((t, h, w, 3), dtype=torch.uint8, device=y.device)
    out[..., 0] = (yf + cr_r * vf).round_().clamp_(0, 255)
    out[..., 1] = (yf + cb_g * uf + cr_g * vf).round_().clamp_(0, 255)
    out[..., 2] = (yf + cb_b * uf).round_().clamp_(0, 255)
    return out


def nv12_to_rgb(
    frames: torch.Tensor, height: int, width: int, *, matrix: str, full_range: bool, chunk: int = 8
) -> torch.Tensor:
    """(T, H + ceil(H/2), W) uint8 NV12 frames -> (T,H,W,3) uint8 RGB, ``chunk`` frames at a time
    so the float temporaries stay small."""
    t = frames.shape[0]
    out = torch.empty((t, height, width, 3), dtype=torch.uint8, device=frames.device)
    ch, cw = (height + 1) // 2, (width + 1) // 2
    for i in range(0, t, chunk):
        f = frames[i : i + chunk]
        uv = f[:, height : height + ch, : 2 * cw].reshape(f.shape[0], ch, cw, 2)
        out[i : i + chunk] = yuv420_to_rgb(
            f[:, :height, :width], uv[..., 0], uv[..., 1], matrix=matrix, full_range=full_range
        )
    return out
