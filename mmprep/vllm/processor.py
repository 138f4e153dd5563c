"""GPU pixels inside vLLM's multimodal processor: mmprep does the HF image/video processors' work.

The hook: vLLM builds every Qwen2/2.5/3-VL processor from ``info.get_hf_processor()`` (the HF
``ProcessorMixin``) and reaches pixels only through its ``.image_processor`` / ``.video_processor``,
in vLLM 0.26 and 0.32 alike. ``install()`` re-registers those models' processing-info classes with a
subclass whose ``get_hf_processor`` swaps both sub-processors for subclasses of their own HF class
that override only ``_preprocess`` (resize -> rescale/normalize -> patchify). HF still validates the
kwargs, samples frames and lays out inputs; vLLM still tokenizes, places placeholders and samples
frames. Cases mmprep does not reproduce (another resample filter, the per-frame pixel cap) run HF's
own ``_preprocess`` on the same device, so results never depend on which path ran.

Outputs leave in the model's dtype (what vLLM casts to anyway) on the host, copied through pinned
memory, unless vLLM keeps device tensors for the engine (0.32+ with ``--mm-tensor-ipc torch_shm``).
"""

from __future__ import annotations

import copy
import importlib
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from transformers.feature_extraction_utils import BatchFeature
from vllm.logger import init_logger

from . import handoff, identity
from .. import memory
from ..config import settings
from ..device import wait_idle
from ..transforms.pipeline import patch_items
from ..transforms.profiles import ImageSettings

__all__ = ["PixelOptions", "MODELS", "install", "swap_hf_processor", "enabled"]

logger = init_logger("vllm.mmprep")  # vLLM's logger setup, so servers show these lines

MODELS: dict[str, tuple[str, str]] = {
    "Qwen2-VL": ("vllm.model_executor.models.qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "Qwen2.5-VL": ("vllm.model_executor.models.qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "Qwen3-VL": ("vllm.model_executor.models.qwen3_vl", "Qwen3VLForConditionalGeneration"),
    "Qwen3-VL-MoE": ("vllm.model_executor.models.qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration"),
}
"""Models whose processor gets mmprep pixels: name -> (vLLM module, model class)."""


@dataclass(frozen=True)
class PixelOptions:
    """Where the swapped processors compute and what they hand back to vLLM."""

    device: str
    """Device for inputs that arrive on the host ("cuda", "cuda:N" or "cpu"); GPU inputs stay where they are."""
    dtype: torch.dtype
    """dtype of float outputs: the model's (vLLM casts HF's float32 to it before sending)."""
    keep_on_device: bool
    """Return GPU tensors (vLLM forwards them by CUDA IPC); else host tensors via pinned memory."""
    tickets: bool = False
    """Share GPU outputs with the engine by CUDA IPC and return tickets in their place (``handoff``)."""


def _smart(mod: Any, t: int, h: int, w: int, kw: dict[str, Any]) -> tuple[int, int]:
    """Qwen2-VL image/video target size, by HF's own ``smart_resize`` of the processor's module."""
    size = kw["size"]
    factor = kw["patch_size"] * kw["merge_size"]
    return mod.smart_resize(h, w, factor=factor, min_pixels=size.shortest_edge, max_pixels=size.longest_edge)


def _smart_video(mod: Any, t: int, h: int, w: int, kw: dict[str, Any]) -> tuple[int, int]:
    """Qwen3-VL video target size: the pixel budget counts frames (HF's own ``smart_resize``)."""
    size = kw["size"]
    return mod.smart_resize(
        num_frames=t, height=h, width=w, temporal_factor=kw["temporal_patch_size"],
        factor=kw["patch_size"] * kw["merge_size"], min_pixels=size.shortest_edge, max_pixels=size.longest_edge,
    )


# HF torchvision-backed processor class -> (modality, target-size rule). The PIL-backed variants
# (use_fast=False) keep HF's path.
_FAMILIES: dict[str, tuple[str, Callable[..., tuple[int, int]]]] = {
    "Qwen2VLImageProcessor": ("image", _smart),
    "Qwen2VLImageProcessorFast": ("image", _smart),
    "Qwen2VLVideoProcessor": ("video", _smart),
    "Qwen3VLVideoProcessor": ("video", _smart_video),
}

_BICUBIC = 3  # PILImageResampling.BICUBIC, the only filter the kernels reproduce


def _unsupported(kw: dict[str, Any]) -> str | None:
    """Why mmprep cannot reproduce this call exactly (None when it can)."""
    resample = kw.get("resample")
    if kw.get("do_resize") and int(getattr(resample, "value", resample)) != _BICUBIC:
        return f"resample={resample!r}"
    if kw.get("cap_pixels_per_frame"):
        return "cap_pixels_per_frame"
    if not kw.get("patch_size") or not kw.get("merge_size") or not kw.get("temporal_patch_size"):
        return "missing patch sizes"
    return None


def _as_tuple(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3


CALLS = {"mmprep": 0, "hf": 0}
"""How many sub-processor calls ran mmprep's path and how many fell back to HF's (per process)."""


class _Pixels:
    """Mixin for an HF Qwen image/video processor: ``_preprocess`` by mmprep, outputs placed for vLLM."""

    _mmprep_modality: str
    _mmprep_target: Callable[..., tuple[int, int]]
    _mmprep_module: Any
    _mmprep: PixelOptions

    def _preprocess(self, *args: Any, **kw: Any):  # noqa: D401 - HF's hook
        key = "videos" if self._mmprep_modality == "video" else "images"
        items = kw.pop(key) if key in kw else args[0]
        opts = self._mmprep
        dev = next((x.device for x in items if x.is_cuda), torch.device(opts.device))
        if (why := _unsupported(kw)) is not None or any(x.shape[-3] != 3 or x.dtype != torch.uint8 for x in items):
            logger.debug("mmprep processor: HF path for %s (%s)", type(self).__name__, why or "input layout")
            CALLS["hf"] += 1
            out = super()._preprocess(**{key: [x.to(dev) for x in items]}, **kw)  # type: ignore[misc]
            return _place(out, opts)
        CALLS["mmprep"] += 1
        frames = [x.to(dev, non_blocking=True) if x.ndim == 4 else x.to(dev, non_blocking=True).unsqueeze(0) for x in items]
        s = ImageSettings(
            resize="fixed", do_resize=bool(kw.get("do_resize", True)), do_rescale=bool(kw["do_rescale"]),
            rescale_factor=float(kw["rescale_factor"]), do_normalize=bool(kw["do_normalize"]),
            image_mean=_as_tuple(kw["image_mean"]), image_std=_as_tuple(kw["image_std"]), patch_size=int(kw["patch_size"]),
            temporal_patch_size=int(kw["temporal_patch_size"]), merge_size=int(kw["merge_size"]),
        )
        sizes = [self._mmprep_target(self._mmprep_module, fr.shape[0], *fr.shape[-2:], kw) if s.do_resize
                 else tuple(fr.shape[-2:]) for fr in frames]
        # Raw pixels (0.32's device-side normalization turns rescale and normalize off) stay uint8, as HF
        # leaves them: the smallest exact form. Otherwise the model dtype vLLM would cast to.
        dtype = torch.uint8 if not (s.do_rescale or s.do_normalize) else _float_dtype(opts.dtype)
        # Outputs made on a GPU count against the budget (vLLM's --mm-ipc-gpu-memory-gb) while there.
        lease = memory.acquire(_out_bytes(frames, sizes, s, dtype)) if dev.type == "cuda" else None
        try:
            outs, grids = [], []
            for fr, (rh, rw) in zip(frames, sizes):
                pv, grid = patch_items([fr], replace(s, height=rh, width=rw), dtype, dev,
                                       dev.type == "cuda" and settings().kernels)
                outs.append(pv)
                grids.append(grid)
            values = outs[0] if len(outs) == 1 else torch.cat(outs)
            names = ("pixel_values_videos", "video_grid_thw") if key == "videos" else ("pixel_values", "image_grid_thw")
            grid = torch.cat(grids)
            shared = _tickets(values, grid, opts) if opts.tickets and dev.type == "cuda" else None
            if shared is not None:
                values, tickets = shared
                out = BatchFeature({names[0]: tickets, names[1]: grid})
            else:
                out = _place(BatchFeature({names[0]: values, names[1]: grid}), opts)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if lease is not None:
            if opts.keep_on_device:
                memory.hold_for(out[names[0]], lease)
            elif shared is not None:
                memory.hold_for(values, lease)  # on the GPU until the engine releases it
            else:
                lease.release()
        return out


def _tickets(values: torch.Tensor, grid: torch.Tensor, opts: PixelOptions) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``values`` in the model dtype, shared with the engine, and its tickets; None when too much already waits."""
    values = _in_model_dtype(values, opts)
    tickets = handoff.pack(values, grid, int(settings().engine_ipc_gb * (1 << 30)))
    return None if tickets is None else (values, tickets)


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels write float32 or bfloat16; other model dtypes get float32 and vLLM casts."""
    return dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32


def _out_bytes(frames: list[torch.Tensor], sizes: list[tuple[int, int]], s: ImageSettings, dtype: torch.dtype) -> int:
    """Bytes of the flattened patches ``frames`` resized to ``sizes`` become."""
    tps, elem = s.temporal_patch_size, torch.empty(0, dtype=dtype).element_size()
    return sum(-(-fr.shape[0] // tps) * tps * 3 * h * w * elem for fr, (h, w) in zip(frames, sizes))


def _in_model_dtype(t: torch.Tensor, opts: PixelOptions) -> torch.Tensor:
    """Float ``t`` cast to the model dtype (what vLLM casts to anyway); other tensors as they are."""
    return t.to(opts.dtype) if t.is_floating_point() and t.dtype != opts.dtype else t


def _place(out: Any, opts: PixelOptions) -> Any:
    """Cast floats to the model dtype; copy GPU tensors to pinned host memory unless vLLM keeps them."""
    for k, v in list(out.items()):
        if not isinstance(v, torch.Tensor):
            continue
        v = _in_model_dtype(v, opts)
        if v.is_cuda and not opts.keep_on_device:
            host = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
            host.copy_(v, non_blocking=True)
            wait_idle(torch.cuda.current_stream(v.device))
            v = host
        out[k] = v
    return out


_subclasses: dict[type, type] = {}
_sub_lock = threading.Lock()


def _subclass(cls: type) -> type | None:
    fam = _FAMILIES.get(cls.__name__)
    if fam is None or not hasattr(cls, "_preprocess"):
        return None
    with _sub_lock:
        sub = _subclasses.get(cls)
        if sub is None:
            sub = type(cls.__name__, (_Pixels, cls), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": f"{cls.__name__} whose pixel work runs in mmprep (GPU kernels).",
                "_mmprep_modality": fam[0], "_mmprep_target": staticmethod(fam[1]),
                "_mmprep_module": sys.modules[cls.__module__],
            })
            _subclasses[cls] = sub
    return sub


def _swap_one(proc: Any, opts: PixelOptions) -> Any:
    """A copy of HF sub-processor ``proc`` computing with mmprep (``proc`` itself when unsupported)."""
    if proc is None or isinstance(proc, _Pixels):
        return proc
    sub = _subclass(type(proc))
    if sub is None:
        return proc
    new = copy.copy(proc)
    new.__class__ = sub
    new._mmprep = opts
    return new


_swapped: dict[tuple[int, PixelOptions], tuple[Any, Any]] = {}


def swap_hf_processor(hf: Any, opts: PixelOptions) -> Any:
    """A shallow copy of HF processor ``hf`` whose image and video processors compute with mmprep.

    ``hf`` itself (vLLM caches and shares it) is left as it is; the copy is made once per processor.
    """
    key = (id(hf), opts)
    with _sub_lock:
        hit = _swapped.get(key)
    if hit is not None and hit[0] is hf:
        return hit[1]
    new = copy.copy(hf)
    for attr in ("image_processor", "video_processor"):
        if (sub := getattr(hf, attr, None)) is not None:
            setattr(new, attr, _swap_one(sub, opts))
    with _sub_lock:
        if len(_swapped) > 64:
            _swapped.clear()
        _swapped[key] = (hf, new)
    return new


def _keeps_device_tensors() -> bool:
    """Whether this vLLM forwards device tensors under torch_shm (0.32 does; 0.26 pins and fails)."""
    from vllm.multimodal.processing.context import InputProcessingContext

    return "torch_shm" in InputProcessingContext._postprocess_output.__code__.co_consts


def options_for(model_config: Any) -> PixelOptions:
    """The options for one served model: its dtype, the GPU to use, and vLLM's tensor transport."""
    mm = model_config.get_multimodal_config()
    device = settings().processor_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    keep = getattr(mm, "mm_tensor_ipc", None) == "torch_shm" and device != "cpu" and _keeps_device_tensors()
    mode = settings().engine_ipc
    tickets = mode != "off" and device != "cpu" and not keep
    # Explicitly asked for: say why it cannot be had. "auto": quietly where it is not known to be safe.
    say = logger.warning if mode == "on" else logger.debug
    if tickets and getattr(mm, "mm_processor_cache_gb", 0) > 0:
        say("mmprep: CUDA IPC tickets need --mm-processor-cache-gb 0 (a cached output would outlive its lease); "
            "sending processor outputs through host memory")
        tickets = False
    if tickets and (parallel := _parallel_flags(sys.argv)):
        say("mmprep: CUDA IPC tickets need one engine process per output (this server runs %s); sending "
            "processor outputs through host memory", parallel)
        tickets = False
    if tickets and mode == "auto" and (why := _auto_refusal(sys.argv)):
        logger.debug("mmprep: MMPREP_ENGINE_IPC=auto: %s; sending processor outputs through host memory", why)
        tickets = False
    how = ("by CUDA IPC tickets" if tickets else "as GPU tensors (vLLM's --mm-tensor-ipc)" if keep
           else "through host memory")
    if device != "cpu" and how not in _said:
        _said.add(how)
        logger.info("mmprep: processor outputs reach the engine %s (MMPREP_ENGINE_IPC=%s)", how, mode)
    return PixelOptions(device=device, dtype=model_config.dtype, keep_on_device=keep, tickets=tickets)


_said: set[str] = set()


def _auto_refusal(argv: list[str]) -> str:
    """Why ``MMPREP_ENGINE_IPC=auto`` sends no tickets here ("" when it does): this vLLM forwards GPU tensors
    itself (0.32: ``--mm-tensor-ipc torch_shm``), or ``argv`` is not a command line whose parallel sizes
    ``_parallel_flags`` sees in full (a ``vllm serve`` without a config file; elsewhere, e.g. an engine built
    in Python or a YAML config, TP or DP may be above 1 unseen, and the engine would refuse the tickets)."""
    if _keeps_device_tensors():
        return "this vLLM forwards GPU tensors itself (--mm-tensor-ipc torch_shm)"
    return _not_plain_serve(argv)


def _not_plain_serve(argv: list[str]) -> str:
    """Why ``argv`` is not a plain ``vllm serve`` command line ("" when it is)."""
    if "serve" not in argv[1:3] and not any("vllm.entrypoints" in a or "vllm/entrypoints" in a for a in argv[:2]):
        return "not a `vllm serve` command line"
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return "a --config file may set parallel sizes"
    return ""


_PARALLEL = {"--data-parallel-size": "DP", "-dp": "DP", "--tensor-parallel-size": "TP", "-tp": "TP",
             "--pipeline-parallel-size": "PP", "-pp": "PP"}


def _parallel_flags(argv: list[str]) -> str:
    """The server's parallel sizes above 1, read from its command line ("" when none): the API server's processor
    sees only the model config, and tickets need a single engine process (the engine refuses them otherwise)."""
    found = []
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in _PARALLEL:
            value = value or (argv[i + 1] if i + 1 < len(argv) else "1")
            if value.isdigit() and int(value) > 1:
                found.append(f"{_PARALLEL[name]}={value}")
    return ", ".join(found)


def keep_video_tensors(parser: Any) -> Any:
    """``parser`` (vLLM's data parser) made to pass bare video tensors through untouched, as 0.32's does.

    Why: vLLM 0.26 turns a bare video tensor into numpy (``tensor.numpy()``). Qwen2-VL's parser keeps
    videos bare, and with the processor cache on (vLLM's default) the cache-miss items are parsed again:
    GPU frames then fail ("can't convert cuda:0 device type tensor to numpy") and the request gets a 400.
    Returns ``parser``."""
    own = parser._get_video_with_metadata

    def get_video_with_metadata(video: Any) -> Any:
        return (video, None) if isinstance(video, torch.Tensor) else own(video)

    parser._get_video_with_metadata = get_video_with_metadata
    return parser


def _info_class(base: type) -> type:
    class MmprepProcessingInfo(base):  # type: ignore[misc, valid-type]
        __doc__ = f"{base.__name__} whose HF processor computes pixels with mmprep."

        def get_data_parser(self):
            return keep_video_tensors(super().get_data_parser())

        def get_hf_processor(self, **kwargs: object):
            hf = super().get_hf_processor(**kwargs)
            opts = getattr(self, "_mmprep_opts", None)
            if opts is None:
                opts = self._mmprep_opts = options_for(self.ctx.model_config)
            return swap_hf_processor(hf, opts)

    MmprepProcessingInfo.__name__ = MmprepProcessingInfo.__qualname__ = f"Mmprep{base.__name__}"
    MmprepProcessingInfo._mmprep_base = base  # type: ignore[attr-defined]
    return MmprepProcessingInfo


def _processor_class(base: type) -> type:
    class MmprepMultiModalProcessor(base):  # type: ignore[misc, valid-type]
        __doc__ = (f"{base.__name__} that identifies mmprep-decoded media by digest, not by hashing pixels, and keeps "
                   "CUDA IPC tickets on the host")

        def _apply_hf_processor(self, inputs: Any, *args: Any, **kwargs: Any):
            return super()._apply_hf_processor(identity.with_uuids(inputs), *args, **kwargs)

        def _cached_apply_hf_processor(self, inputs: Any, *args: Any, **kwargs: Any):
            return super()._cached_apply_hf_processor(identity.with_uuids(inputs), *args, **kwargs)

        def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Any):
            return handoff.fields_on_cpu(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs), hf_inputs)

    MmprepMultiModalProcessor.__name__ = MmprepMultiModalProcessor.__qualname__ = f"Mmprep{base.__name__}"
    MmprepMultiModalProcessor._mmprep_base = base  # type: ignore[attr-defined]
    return MmprepMultiModalProcessor


def enabled() -> bool:
    """Whether the processor swap is on: ``MMPREP_PROCESSOR`` (auto = with mmprep's loader/connector on a GPU)."""
    mode = settings().processor
    if mode == "auto":
        from .plugin import routed

        return routed() and torch.cuda.is_available()
    return mode == "on"


_installed: list[str] = []


def install() -> list[str]:
    """Point the supported models' processing info at the mmprep subclass (idempotent); their names."""
    for name, (module, cls_name) in MODELS.items():
        if name in _installed:
            continue
        try:
            model_cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as e:  # a vLLM without that model
            logger.debug("mmprep processor: %s not available (%s)", name, e)
            continue
        fac = model_cls.__dict__.get("_processor_factory")
        if fac is None or not isinstance(fac.info, type):
            continue
        if not hasattr(fac.info, "_mmprep_base"):
            # What MULTIMODAL_REGISTRY.register_processor(...)(model_cls) does, without its
            # "overwritten" warning in every process: the same three factories, the info subclassed.
            proc = fac.processor
            if isinstance(proc, type) and hasattr(proc, "_cached_apply_hf_processor"):
                proc = _processor_class(proc)
            model_cls._processor_factory = type(fac)(info=_info_class(fac.info), dummy_inputs=fac.dummy_inputs,
                                                     processor=proc)
        _installed.append(name)
    return list(_installed)


def uninstall() -> None:
    """Give the models their vLLM processing info back (tests; a server keeps what it started with)."""
    for name in list(_installed):
        module, cls_name = MODELS[name]
        model_cls = getattr(importlib.import_module(module), cls_name)
        fac = model_cls.__dict__.get("_processor_factory")
        if fac is not None and hasattr(fac.info, "_mmprep_base"):
            proc = getattr(fac.processor, "_mmprep_base", fac.processor)
            model_cls._processor_factory = type(fac)(info=fac.info._mmprep_base, dummy_inputs=fac.dummy_inputs,
                                                     processor=proc)
        _installed.remove(name)
