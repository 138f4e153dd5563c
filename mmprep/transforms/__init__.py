"""Model-exact transforms: HF-processor outputs computed in torch or one fused CUDA kernel."""

from .pipeline import preprocess
from .profiles import PROFILES, ImageSettings, Profile, get_profile

__all__ = ["preprocess", "PROFILES", "Profile", "ImageSettings", "get_profile"]
