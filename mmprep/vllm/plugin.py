"""What ``mmprep.vllm.register()`` does: loaders, connector, and vLLM's GPU budget for mmprep."""

from __future__ import annotations

import threading

import torch
from vllm.logger import init_logger

from .. import kernels, memory
from ..config import settings
from . import CONNECTOR_NAME, LOADER_NAME
from .loader import SAMPLERS, make_loader

logger = init_logger("vllm.mmprep")  # vLLM's logger setup, so servers show these lines
_lock = threading.Lock()
_twins: dict[str, type] = {}  # sampler -> mmprep loader class
_routes: dict[str, str] = {}  # video processor -> vLLM's own sampler for it, as found at first call


def _vllm_pool():
    from vllm.multimodal.gpu_ipc_memory import get_mm_gpu_ipc_pool

    return get_mm_gpu_ipc_pool()


def routed() -> bool:
    """True when the environment asks vLLM to decode with mmprep."""
    import vllm.envs as envs

    return envs.VLLM_VIDEO_LOADER_BACKEND == LOADER_NAME or envs.VLLM_MEDIA_CONNECTOR == CONNECTOR_NAME


def register() -> None:
    """Register the mmprep loaders and connector, then route model samplers per the environment.

    Safe to call again: the registrations happen once, the routing follows the current
    ``VLLM_VIDEO_LOADER_BACKEND`` / ``VLLM_MEDIA_CONNECTOR``.
    """
    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY as reg

    with _lock:
        if not _twins:
            from .connector import MmprepMediaConnector

            for sampler, name in SAMPLERS.items():
                base = reg.name2class.get(sampler)
                if base is None:  # a vLLM without that sampler: nothing to mirror
                    continue
                _twins[sampler] = reg.register(name, requires_gpu=True)(make_loader(base, sampler))
            _routes.update({p: s for p, s in reg.processor2backend.items() if s in _twins})
            MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)(MmprepMediaConnector)
            # Decoded frames held on the GPU count against vLLM's --mm-ipc-gpu-memory-gb when set.
            memory.set_budget_source(_vllm_pool)
        on = routed()
        # vLLM picks a model's own sampler (e.g. qwen2_vl for Qwen2-VL) over the env var through
        # its processor -> loader table; point that table at the mmprep twin of the same sampler.
        for proc, sampler in _routes.items():
            name = SAMPLERS[sampler] if on else sampler
            reg.register(name, video_processor=proc, requires_gpu=reg.backend_requires_gpu(name))(reg.name2class[name])
        pixels = _install_processor()
    logger.info("mmprep: video loaders %s and media connector %r registered; model samplers %s",
                sorted(SAMPLERS[s] for s in _twins), CONNECTOR_NAME, "routed to mmprep" if on else "left to vLLM")
    if pixels and not _said:
        _said.append(True)
        logger.info("mmprep: processor pixels (resize, normalize, patchify) by mmprep for %s; every other model "
                    "keeps vLLM's processor unchanged (MMPREP_PROCESSOR=off turns this off)", ", ".join(pixels))


_said: list[bool] = []


def _install_processor() -> list[str]:
    """Swap in mmprep's image/video processors for the supported models when ``MMPREP_PROCESSOR`` says so."""
    from . import processor

    if not processor.enabled():
        return []
    if torch.cuda.is_available():
        kernels.fused(wait=False)  # start the JIT build now; calls before it finishes take the torch path
    names = processor.install()
    if settings().engine_ipc != "off":  # the engine process loads plugins too: its models then take tickets for pixels
        from .handoff import install_consumers

        install_consumers({n: processor.MODELS[n] for n in names})
    return names
