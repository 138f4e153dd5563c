"""Seeded fuzzing of damaged media: every outcome is a valid result or a ``MediaError`` subclass.

CI runs a few hundred mutations on the CPU. ``MMPREP_FUZZ=N`` runs N per seed set instead, and
``MMPREP_FUZZ_DEVICE=cuda`` decodes on NVDEC/nvJPEG (the GPU machine); decoder sessions and GPU
memory must return to where they were. ``MMPREP_FUZZ_TRACE=DIR`` writes each input to
``DIR/<seed>.last`` before decoding it (removed when the seed set finishes), so that an input that
kills the process (a crash inside a native decoder) is left behind to study.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

import mmprep

from .helpers import clip, report
from .images import encode, jpeg, pattern

N = int(os.environ.get("MMPREP_FUZZ", "150"))
DEVICE = os.environ.get("MMPREP_FUZZ_DEVICE", "cpu")
TRACE = os.environ.get("MMPREP_FUZZ_TRACE")


def seeds() -> dict[str, tuple[str, bytes]]:
    from PIL import Image

    return {
        # 256x144: small, yet inside NVDEC's size limits for every codec (HEVC needs 144 rows)
        "h264_mp4": ("video", clip("h264", width=256, height=144, frames=16, fps=8, gop=8)),
        "hevc_mp4": ("video", clip("hevc", width=256, height=144, frames=16, fps=8, gop=8)),
        "vp9_webm": ("video", clip("vp9", width=256, height=144, frames=16, fps=8, gop=8)),
        "jpeg": ("image", jpeg(96, 128)),
        "png": ("image", encode(Image.fromarray(pattern()), "PNG")),
    }


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One damage of ``data``: bit flips, truncation, a duplicated/deleted/zeroed byte range."""
    b = bytearray(data)
    n = len(b)
    kind = ("flip", "truncate", "duplicate", "delete", "zero")[int(rng.integers(5))]
    lo = int(rng.integers(0, n))
    hi = min(n, lo + int(rng.integers(1, max(2, n // 8))))
    if kind == "flip":
        for pos in rng.integers(0, n, int(rng.integers(1, 16))):
            b[pos] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        b = b[:lo]
    elif kind == "duplicate":
        b[hi:hi] = b[lo:hi]
    elif kind == "delete":
        del b[lo:hi]
    else:
        b[lo:hi] = bytes(hi - lo)
    return kind, bytes(b)


def decode(modality: str, data: bytes) -> None:
    if modality == "video":
        v = mmprep.decode_video(data, num_frames=4, device=DEVICE)
        assert v.frames.ndim == 4 and v.frames.shape[0] == len(v.indices) > 0
    else:
        (img,) = mmprep.decode_images([data], device=DEVICE)
        assert img.ndim == 3 and img.shape[0] == 3


@pytest.mark.parametrize("name", sorted(seeds()))
def test_damaged_media_raise_only_media_errors(name):
    if DEVICE != "cpu":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("MMPREP_FUZZ_DEVICE needs CUDA")
    modality, data = seeds()[name]
    decode(modality, data)  # the seed itself decodes (and warms sessions / the allocator)
    mem0 = _gpu_mem()
    rng = np.random.default_rng(sum(map(ord, name)))
    outcomes: collections.Counter[str] = collections.Counter()
    trace = os.path.join(TRACE, f"{name}.last") if TRACE else None
    for i in range(N):
        kind, bad = mutate(data, rng)
        if trace:
            os.makedirs(TRACE, exist_ok=True)
            with open(trace, "wb") as f:
                f.write(bad)
        try:
            decode(modality, bad)
            outcomes["ok"] += 1
        except mmprep.MediaError as e:
            outcomes[type(e).__name__] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutation {i} ({kind}, {len(bad)} bytes) of {name} raised {type(e).__name__}: {e}")
    if trace and os.path.exists(trace):
        os.remove(trace)
    report("fuzz", seed=name, device=DEVICE, n=N, **outcomes)
    assert sum(outcomes.values()) == N
    assert _gpu_mem() <= mem0  # nothing left behind (it may drop: the seed's last buffers are freed)
    if DEVICE != "cpu" and modality == "video":
        from mmprep.decode.video_nvdec import get_pool

        assert all(v == 0 for v in get_pool().stats()["busy"].values())


def _gpu_mem() -> int:
    if DEVICE == "cpu":
        return 0
    import torch

    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def mutation(name: str, i: int) -> bytes:
    """The ``i``-th mutation the test above makes of seed ``name`` (same seed, same sequence)."""
    _, data = seeds()[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    for _ in range(i + 1):
        _, bad = mutate(data, rng)
    return bad


@pytest.mark.gpu
def test_nvdec_demuxer_disagreement_is_a_media_error():
    """Found by the GPU fuzz (2026-11-28): zeroed bytes make NVDEC's demuxer and the probe disagree on a
    key-frame flag; that escaped as an internal error. Now: NVDEC refuses (UnsupportedCodecError) and
    ``auto`` hands the stream to the CPU decoder, which judges the damage."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    bad = mutation("h264_mp4", 68)
    for device in ("cuda", "auto"):
        with pytest.raises(mmprep.MediaError):
            mmprep.decode_video(bad, num_frames=4, device=device)
