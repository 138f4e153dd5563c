"""Shared helpers: synthetic clips (cached per session) and measured-value reports."""

from __future__ import annotations

import functools
import json
import os

from mmprep.testing import make_video


@functools.lru_cache(maxsize=None)
def clip(codec: str = "h264", **kwargs) -> bytes:
    """Encode (once per session) a synthetic clip; kwargs as ``mmprep.testing.make_video``."""
    return make_video(codec, **kwargs)


def report(name: str, **values) -> None:
    """Append measured values to $MMPREP_TEST_REPORT (JSON lines) when set, and print them."""
    line = json.dumps({"test": name, **values})
    print(line)
    path = os.environ.get("MMPREP_TEST_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
