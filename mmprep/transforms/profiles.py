"""Model profiles: the HF processor defaults mmprep reproduces, one frozen dataclass per model family.

A profile holds the image and the video settings of one model's processors; ``with_kwargs``
applies processor kwargs a user sets (``min_pixels``, ``max_pixels``, ``size``, ``patch_size``,
``image_mean``, ``do_normalize=False`` ...) the way the HF processors read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["ImageSettings", "Profile", "PROFILES", "get_profile"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ImageSettings:
    """Processor settings for one modality (images or videos) of one model."""

    resize: str
    """``"smart"`` (Qwen2-VL), ``"smart_video"`` (Qwen3-VL videos: frames share the budget),
    ``"shortest_edge"`` (CLIP: short side, then center crop) or ``"fixed"`` (SigLIP)."""
    min_pixels: int = 0
    max_pixels: int = 0
    shortest_edge: int = 0
    height: int = 0
    width: int = 0
    crop_height: int = 0
    crop_width: int = 0
    do_resize: bool = True
    do_center_crop: bool = False
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    patch_size: int = 0
    """0: no patch flattening (CLIP-style NCHW output)."""
    temporal_patch_size: int = 1
    merge_size: int = 1

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def with_kwargs(self, kwargs: dict[str, Any]) -> "ImageSettings":
        """Apply HF processor kwargs; unknown names raise a ``ValueError`` listing the known ones."""
        known = {f.name for f in fields(self)} - {"resize"}
        changes: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key == "size":
                if not isinstance(value, dict):
                    raise ValueError(f"size must be a dict, got {value!r}")
                for k, v in value.items():
                    if k == "shortest_edge" and self.resize.startswith("smart"):
                        changes["min_pixels"] = int(v)
                    elif k == "longest_edge" and self.resize.startswith("smart"):
                        changes["max_pixels"] = int(v)
                    elif k in ("shortest_edge", "height", "width"):
                        changes[k] = int(v)
                    else:
                        raise ValueError(f"size keys must be shortest_edge/longest_edge/height/width, got {k!r}")
            elif key == "crop_size":
                changes["crop_height"], changes["crop_width"] = int(value["height"]), int(value["width"])
            elif key in ("image_mean", "image_std"):
                changes[key] = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3))
            elif key in known:
                changes[key] = value
            else:
                raise ValueError(f"unknown processor kwarg {key!r}; known: {sorted(known | {'size', 'crop_size'})}")
        return replace(self, **changes)


@dataclass(frozen=True)
class Profile:
    """A model family's image and video processor settings."""

    name: str
    image: ImageSettings
    video: ImageSettings | None = None
    aliases: tuple[str, ...] = field(default=())


PROFILES: dict[str, Profile] = {}


def _register(p: Profile) -> None:
    for n in (p.name, *p.aliases):
        PROFILES[n] = p


# Qwen2-VL and Qwen2.5-VL share processors (Qwen2VLImageProcessor / Qwen2VLVideoProcessor).
_register(
    Profile(
        name="qwen2_vl",
        aliases=("qwen2_5_vl", "qwen2.5_vl"),
        image=ImageSettings(resize="smart", min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, temporal_patch_size=2, merge_size=2),
        video=ImageSettings(resize="smart", min_pixels=128 * 28 * 28, max_pixels=28 * 28 * 768, patch_size=14, temporal_patch_size=2, merge_size=2),
    )
)
# Qwen3-VL: Qwen2VLImageProcessor configured with patch 16 and mean/std 0.5 (its preprocessor_config),
# and Qwen3VLVideoProcessor, whose pixel budget counts frames.
_register(
    Profile(
        name="qwen3_vl",
        image=ImageSettings(resize="smart", min_pixels=65536, max_pixels=16777216, patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=HALF, image_std=HALF),
        video=ImageSettings(resize="smart_video", min_pixels=128 * 32 * 32, max_pixels=32 * 32 * 768, patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=HALF, image_std=HALF),
    )
)
_register(
    Profile(
        name="clip",
        image=ImageSettings(resize="shortest_edge", shortest_edge=224, do_center_crop=True, crop_height=224, crop_width=224),
    )
)
_register(
    Profile(
        name="siglip",
        image=ImageSettings(resize="fixed", height=224, width=224, image_mean=HALF, image_std=HALF),
    )
)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}") from None
