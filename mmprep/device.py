"""One reading of the ``device`` argument every public function takes.

``"auto"`` means the same everywhere: the GPU when the step can run there (a CUDA device with the
engine the step needs: NVDEC, nvJPEG, or simply CUDA for transforms), else the CPU. Each caller decides
what "can run there" means; this module only parses and validates.
"""

from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "parse_device", "wait_idle"]

DEVICE_CHOICES = '"auto", "cpu", "cuda", "cuda:N" or a torch.device'


def parse_device(device: str | torch.device) -> tuple[str, int | None]:
    """``device`` as ("auto" | "cpu" | "cuda", GPU ordinal or None); a ``ValueError`` names the choices."""
    if isinstance(device, torch.device):
        if device.type in ("cpu", "cuda"):
            return device.type, device.index
    elif isinstance(device, str):
        if device in ("auto", "cpu", "cuda"):
            return device, None
        if device.startswith("cuda:") and device[5:].isdigit():
            return "cuda", int(device[5:])
    raise ValueError(f"device must be {DEVICE_CHOICES}, got {device!r}")


def wait_idle(stream: torch.cuda.Stream) -> None:
    """Wait until the work queued on ``stream`` is done, sleeping rather than spinning.

    Why: ``stream.synchronize()`` busy-waits a CPU core for as long as the GPU work takes (CUDA's default
    scheduling on hosts with more cores than active contexts); a blocking-sync event lets the thread sleep,
    which is what a server's CPU budget needs. Returns nothing."""
    event = torch.cuda.Event(blocking=True)
    event.record(stream)
    event.synchronize()
