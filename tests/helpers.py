"""Helpers shared by the test modules: cached synthetic clips, measured-value reports, reference inputs."""

from __future__ import annotations

import contextlib
import functools
import json
import os

import numpy as np
import pytest
import torch

from mmprep.testing import make_video


@functools.lru_cache(maxsize=None)
def clip(codec: str = "h264", **kwargs) -> bytes:
    """Encode (once per session) a synthetic clip; kwargs as ``mmprep.testing.make_video``."""
    return make_video(codec, **kwargs)


@contextlib.contextmanager
def vllm_plugins_loaded(**env: str | None):
    """vLLM's general plugins loaded as every vLLM process loads them, with ``env`` set (None: unset); afterwards
    the environment as it was, mmprep's routing re-synced to it and vLLM's own processors back (on a GPU host
    ``MMPREP_PROCESSOR=auto`` swaps in mmprep's; later modules test vLLM's)."""
    import vllm.plugins

    from mmprep.vllm import processor, register

    old = {k: os.environ.get(k) for k in env}

    def put(values: dict[str, str | None]) -> None:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    put(env)
    vllm.plugins.plugins_loaded = False
    vllm.plugins.load_general_plugins()
    try:
        yield
    finally:
        put(old)
        register()
        processor.uninstall()


def report(name: str, **values) -> None:
    """Append measured values to $MMPREP_TEST_REPORT (JSON lines) when set, and print them."""
    line = json.dumps({"test": name, **values})
    print(line)
    path = os.environ.get("MMPREP_TEST_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


SIZES = [(242, 322), (77, 1201), (480, 640), (1080, 1920), (31, 29)]


def rand_images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def smooth_video(t, h, w, seed=0):
    """Frames with spatial structure (random data makes every rounding tie a coin toss)."""
    from mmprep.testing import synthetic_frame

    return torch.from_numpy(np.stack([synthetic_frame(seed + i, w, h) for i in range(t)]))


def pil_reference(data: bytes, background=(255, 255, 255)) -> np.ndarray:
    """What vLLM's own ``ImageMediaIO`` makes of ``data`` (EXIF orientation, RGB, alpha over background)."""
    media = pytest.importorskip("vllm.multimodal.media", reason="vLLM is not installed")
    img = media.ImageMediaIO(image_mode="RGB", rgba_background_color=background).load_bytes(data)
    img = getattr(img, "media", img)  # 0.32 wraps it in MediaWithBytes
    return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
