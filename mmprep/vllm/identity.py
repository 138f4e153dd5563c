"""Cache identities for the media mmprep decodes, so that vLLM never hashes decoded pixels.

vLLM keys its processor and encoder caches by a hash of every media item. vLLM 0.26 hashes a
video's decoded frames, copying GPU frames to the host first (20 1080p frames: 124 MB copied and
hashed per request, on the API server's event loop); 0.32 hashes the encoded bytes. mmprep tags
each tensor it decodes with a digest of the encoded bytes and of every decode choice that shapes
the pixels (frame indices, device kind, rotation), and the processor passes that digest to vLLM as
the item's uuid, the identity vLLM already accepts from clients. A uuid the client sent wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

__all__ = ["Digests", "digest", "tag", "tag_of", "with_uuids"]

_ATTR = "_mmprep_identity"


def _hasher() -> Any:
    try:  # vLLM's default hash (a vLLM dependency); sha256 where it is missing
        from blake3 import blake3

        return blake3()
    except ImportError:
        return hashlib.sha256()


class Digests:
    """Digests of one encoded input under several sets of decode choices; its bytes are hashed once
    (the loader needs two: its cache key and the frames' identity)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data: bytes | memoryview | None = data
        self._of_bytes = ""

    def __call__(self, *choices: object) -> str:
        """Hex digest of the encoded media and the decode ``choices`` that shape its pixels."""
        if self._data is not None:
            h = _hasher()
            h.update(self._data)
            self._of_bytes, self._data = h.hexdigest(), None
        h = _hasher()
        h.update(self._of_bytes.encode())
        h.update(repr(choices).encode())
        return "mmprep-" + h.hexdigest()


def digest(data: bytes | memoryview, *choices: object) -> str:
    """Hex digest of encoded media ``data`` and the decode ``choices`` that shape its pixels."""
    return Digests(data)(*choices)


def tag(t: torch.Tensor, identity: str) -> torch.Tensor:
    """Attach ``identity`` (from ``digest``) to decoded tensor ``t``; returns ``t``."""
    setattr(t, _ATTR, identity)
    return t


def tag_of(item: object) -> str | None:
    """The identity of a vLLM media item holding an mmprep tensor (bare, in a MediaWithBytes or a
    ``(frames, metadata)`` pair); None for anything else, which vLLM hashes as usual."""
    item = getattr(item, "media", item)  # MediaWithBytes
    if isinstance(item, tuple) and item:
        item = item[0]
    return getattr(item, _ATTR, None) if isinstance(item, torch.Tensor) else None


def with_uuids(inputs: Any) -> Any:
    """vLLM ``ProcessorInputs`` whose mmprep items carry their identity as uuid (``inputs`` if none)."""
    given = inputs.mm_uuid_items or {}
    merged: dict[str, list[str | None]] = {}
    for modality, items in inputs.mm_data_items.items():
        tags = [tag_of(x) for x in items.get_all_items_for_hash()]
        if not any(tags):
            continue
        theirs = list(given.get(modality) or [None] * len(tags))
        merged[modality] = [u if u is not None else t for u, t in zip(theirs, tags)]
    if not merged:
        return inputs
    return dataclasses.replace(inputs, mm_uuid_items={**given, **merged})
