"""mmprep's ctypes mirror of the NVDEC API structs has the C layout (a wrong field shifts every later one, and
the driver then reads garbage). Reference: ``sizeof`` / ``offsetof`` of Video Codec SDK 13.0's headers
(nv-codec-headers n13.0), compiled with gcc on x86-64 Linux, 2026-11-28."""

import ctypes
import platform
import sys

import pytest

from mmprep.decode import cuvid

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64" or ctypes.sizeof(ctypes.c_long) != 8,
                                reason="reference layout measured on x86-64 Linux")

SIZES = {"_Format": 64, "_Caps": 88, "_CreateInfo": 176, "_Reconfigure": 128, "_ProcParams": 264, "_DispInfo": 24,
         "_Packet": 32, "_ParserParams": 136}
OFFSETS = {("_ParserParams", "pExtVideoInfo"): 128, ("_ProcParams", "output_stream"): 56,
           ("_CreateInfo", "vidLock"): 120, ("_Format", "seqhdr_data_length"): 60}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_struct_sizes_match_the_sdk_header(name):
    assert ctypes.sizeof(getattr(cuvid, name)) == SIZES[name]


@pytest.mark.parametrize("name,field", sorted(OFFSETS))
def test_field_offsets_match_the_sdk_header(name, field):
    assert getattr(getattr(cuvid, name), field).offset == OFFSETS[(name, field)]


def test_without_a_driver_the_binding_says_unavailable():
    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        assert not cuvid.cuvid_available()
    else:
        pytest.skip("this machine has NVIDIA's video driver library")


def test_display_delay_out_of_range_is_refused_by_name(monkeypatch, fresh_settings):
    from mmprep.config import settings

    monkeypatch.setenv("MMPREP_NVDEC_DISPLAY_DELAY", "17")
    with pytest.raises(ValueError, match="MMPREP_NVDEC_DISPLAY_DELAY must be <= 16, got 17"):
        settings()
    with pytest.raises(ValueError, match="display_delay must be in 0..16, got -1"):
        cuvid.CuvidDecoder(0, None, 64, 64, display_delay=-1)
