"""Processor outputs handed to the engine by CUDA IPC tickets (``mmprep.vllm.handoff``, ``MMPREP_ENGINE_IPC=1``).

CPU: the ticket layout (handles in the first rows of each item, sliced and batched by rows like pixels), the
codec, the model-parser wrappers on real vLLM model classes, and the options (the processor cache must be off).
GPU: a real vLLM processor producing tickets, opened in another process and in its own, equal to the pixels.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install mmprep[test])")

from mmprep import ipc  # noqa: E402
from mmprep.config import settings  # noqa: E402
from mmprep.vllm import handoff  # noqa: E402
from mmprep.vllm import processor as hook  # noqa: E402

from .test_vllm_processor import PROMPT, VIDEO, apply, model_config, processors, tiny, video_item  # noqa: E402,F401


def handle(slot: int, rows: int = 24) -> ipc.Handle:
    """A handle as ``ipc.share`` makes them (every field set to a value that must survive the codec)."""
    return ipc.Handle(mem=bytes(range(64)), offset=4096 * slot, device_uuid="GPU-0d1c9a57-7c33-4b7c-a5f1-4e5b8c1d2e3f",
                      shape=(rows, 1176), stride=(1176, 1), dtype="bfloat16", nbytes_span=rows * 1176 * 2,
                      event=bytes(range(64, 128)), table=f"/dev/shm/mmprep-ipc-4242-{slot:08x}", slot=slot,
                      generation=7 + slot, producer_pid=4242)


def test_codec_round_trip_fits_the_smallest_item():
    h = handle(3)
    blob = handoff.encode(h)
    assert handoff.decode(blob) == h
    assert handoff.decode(blob + bytes(100)) == h  # trailing zeros of the item's rows are ignored
    assert len(blob) <= handoff._ROOM <= 16 * handoff.WIDTH  # a 4x4-patch image (16 rows) holds it


def test_decode_refuses_what_is_not_a_ticket():
    with pytest.raises(ValueError, match="magic"):
        handoff.decode(bytes(64))
    blob = bytearray(handoff.encode(handle(0)))
    blob[4] = 99
    with pytest.raises(ValueError, match="version 99"):
        handoff.decode(bytes(blob))
    with pytest.raises(ValueError, match="dtype"):
        handoff.encode(ipc.Handle(**{**handle(0).__dict__, "dtype": "int64"}))


def test_tickets_slice_and_batch_like_pixels():
    """vLLM cuts an output into items by grid rows and concatenates items of several requests: each piece
    still names its own handle."""
    rows = [16, 40, 24]
    hs = [handle(i, n) for i, n in enumerate(rows)]
    t = handoff.write_tickets([handoff.encode(h) for h in hs], rows)
    assert t.shape == (sum(rows), handoff.WIDTH) and t.dtype == torch.uint8
    assert handoff.read_tickets(t, rows) == hs
    batched = torch.cat([t[16:56], t[:16]])  # vLLM's per-item slices, batched in another order
    assert handoff.read_tickets(batched, [40, 16]) == [hs[1], hs[0]]
    assert handoff.is_ticket(t) and handoff.is_ticket(batched)
    with pytest.raises(ValueError, match="grids say"):
        handoff.read_tickets(t, [16, 40])


def test_tickets_ride_vllms_own_slicing_and_batching():
    """Through vLLM's own code: the processor output is cut into items by Qwen2-VL's field config, and the engine
    batches items of two requests in its own order; each item still opens its own handle."""
    from transformers.feature_extraction_utils import BatchFeature
    from vllm.model_executor.models.qwen2_vl import _create_qwen2vl_field_factory
    from vllm.multimodal.inputs import MultiModalKwargsItems
    from vllm.multimodal.utils import group_and_batch_mm_kwargs

    requests = [([16, 40], torch.tensor([[1, 4, 4], [1, 4, 10]])), ([24], torch.tensor([[1, 4, 6]]))]
    hs, items = [], []
    for rows, grid in requests:
        mine = [handle(len(hs) + i, n) for i, n in enumerate(rows)]
        hs += mine
        hf = BatchFeature({"pixel_values": handoff.write_tickets([handoff.encode(h) for h in mine], rows),
                           "image_grid_thw": grid})
        kw = MultiModalKwargsItems.from_hf_inputs(hf, _create_qwen2vl_field_factory(2)(hf))
        items += [("image", item) for item in kw["image"]]
    ((modality, n, batch),) = list(group_and_batch_mm_kwargs([items[2], items[0], items[1]]))
    assert modality == "image" and n == 3 and handoff.is_ticket(batch["pixel_values"])
    got = handoff.read_tickets(batch["pixel_values"], handoff._rows(batch["image_grid_thw"]))
    assert got == [hs[2], hs[0], hs[1]]


def test_tickets_stay_on_the_host_when_vllm_moves_a_batch(tiny):
    """mmprep's processor marks ticket fields ``keep_on_cpu``: vLLM's own batching moves the rest to the engine's
    device and leaves the tickets on the host, where the engine reads them without waiting for the GPU."""
    from transformers.feature_extraction_utils import BatchFeature
    from vllm.multimodal.inputs import MultiModalKwargsItems
    from vllm.multimodal.utils import group_and_batch_mm_kwargs

    _, mine = processors(model_config(tiny, dtype="float32"), "cpu")
    rows, grid = [16, 40], torch.tensor([[1, 4, 4], [1, 4, 10]])
    hs = [handle(i, n) for i, n in enumerate(rows)]
    tickets = handoff.write_tickets([handoff.encode(h) for h in hs], rows)
    for key, grid_key, modality in (("pixel_values_videos", "video_grid_thw", "video"),
                                    ("pixel_values", "image_grid_thw", "image")):
        hf = BatchFeature({key: tickets, grid_key: grid})
        config = mine._get_mm_fields_config(hf, {})
        assert config[key].field.keep_on_cpu, key
        items = MultiModalKwargsItems.from_hf_inputs(hf, config)[modality]
        ((_, n, batch),) = list(group_and_batch_mm_kwargs([(modality, it) for it in items], device="meta"))
        assert n == 2 and batch[key].device.type == "cpu"
        assert handoff.read_tickets(batch[key], handoff._rows(grid)) == hs
        pixels = BatchFeature({key: torch.rand(sum(rows), 1176), grid_key: grid})
        config = mine._get_mm_fields_config(pixels, {})
        assert not config[key].field.keep_on_cpu  # pixels travel as vLLM decides
        ((_, _, batch),) = list(group_and_batch_mm_kwargs(
            [(modality, it) for it in MultiModalKwargsItems.from_hf_inputs(pixels, config)[modality]], device="meta"))
        assert batch[key].device.type == "meta"


def test_tickets_refuse_an_item_too_small_for_its_handle():
    with pytest.raises(ValueError, match="2 rows"):
        handoff.write_tickets([handoff.encode(handle(0))], [2])


def test_pixels_are_not_tickets():
    assert not handoff.is_ticket(torch.rand(32, 1176))
    assert not handoff.is_ticket(torch.randint(0, 255, (32, 1176), dtype=torch.uint8))  # 0.32's raw patches
    assert not handoff.is_ticket(torch.zeros(32, handoff.WIDTH, dtype=torch.uint8))
    assert not handoff.is_ticket(None)


@pytest.fixture
def restore_parsers():
    """The model classes' parsers as vLLM defines them during the test (unwrapped, should a plugin load earlier in
    this process have wrapped them), and as they were put back after it."""
    import importlib

    saved = []
    for module, cls_name in hook.MODELS.values():
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            continue
        saved += [(cls, m, cls.__dict__[m]) for m in handoff._KEYS if m in cls.__dict__]
    for cls, m, fn in saved:
        if hasattr(fn, "_mmprep_wrapped"):
            setattr(cls, m, fn._mmprep_wrapped)
    yield
    for cls, m, fn in saved:
        setattr(cls, m, fn)
    for module, cls_name in hook.MODELS.values():
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            continue
        for m in handoff._KEYS:
            if m in cls.__dict__ and not any(c is cls and n == m for c, n, _ in saved):
                delattr(cls, m)


def test_parsers_wrapped_once_and_pixels_pass_untouched(restore_parsers):
    from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration as Q

    original = Q._parse_and_validate_video_input
    names = handoff.install_consumers(hook.MODELS)
    assert {"Qwen2-VL", "Qwen2.5-VL", "Qwen3-VL"} <= set(names)
    wrapped = Q._parse_and_validate_video_input
    assert wrapped._mmprep_wrapped is original
    handoff.install_consumers(hook.MODELS)
    assert Q._parse_and_validate_video_input is wrapped  # idempotent
    pv, grid = torch.rand(16, 1176), torch.tensor([[1, 4, 4]])
    got = Q._parse_and_validate_video_input(object(), pixel_values_videos=pv, video_grid_thw=grid)
    assert got["pixel_values_videos"] is pv and torch.equal(got["video_grid_thw"], grid)
    assert Q._parse_and_validate_image_input(object()) is None  # no image in the request


def test_options_need_the_processor_cache_off(tiny, monkeypatch, fresh_settings):
    monkeypatch.setenv("MMPREP_ENGINE_IPC", "1")
    monkeypatch.setenv("MMPREP_PROCESSOR_DEVICE", "cuda")
    on = hook.options_for(model_config(tiny, dtype="bfloat16", mm_processor_cache_gb=0))
    cached = hook.options_for(model_config(tiny, dtype="bfloat16", mm_processor_cache_gb=1))
    assert on.tickets and not on.keep_on_device
    assert not cached.tickets
    monkeypatch.delenv("MMPREP_ENGINE_IPC")
    settings.cache_clear()
    assert settings().engine_ipc == "auto"  # the default: tickets only on a plain `vllm serve` (pytest is not one)
    assert not hook.options_for(model_config(tiny, dtype="bfloat16", mm_processor_cache_gb=0)).tickets


def test_tickets_by_default_on_a_plain_serve_command_line(tiny, monkeypatch, fresh_settings):
    """MMPREP_ENGINE_IPC=auto: on a vLLM that sends no GPU tensors (0.26), where every parallel size shows on
    the command line and the cache is off; on one that does (0.32), vLLM's own --mm-tensor-ipc is the way."""
    plain = (["/usr/bin/vllm", "serve", "m", "--mm-processor-cache-gb", "0"],
             ["/x/vllm/entrypoints/openai/api_server.py", "--model", "m"])
    for argv in plain:
        assert hook._not_plain_serve(argv) == "", argv
    for argv in (["/usr/bin/vllm", "serve", "m", "--config", "c.yaml"],  # may set TP or DP unseen
                 ["python", "my_server.py"]):  # an engine built in Python: its sizes are not on the command line
        assert hook._not_plain_serve(argv), argv
    monkeypatch.setenv("MMPREP_PROCESSOR_DEVICE", "cuda")
    options = lambda cache=0: hook.options_for(model_config(tiny, dtype="bfloat16", mm_processor_cache_gb=cache))  # noqa: E731
    own_ipc = hook._keeps_device_tensors()  # this vLLM's (0.32 in CI, 0.26 on the GPU machine)
    for argv in plain:
        monkeypatch.setattr("sys.argv", argv)
        assert options().tickets == (not own_ipc), argv
        assert not options(cache=4).tickets  # vLLM's default cache: a cached output would outlive its lease
    for argv in (["/usr/bin/vllm", "serve", "m", "--config", "c.yaml"], ["/usr/bin/vllm", "serve", "m", "-tp", "2"]):
        monkeypatch.setattr("sys.argv", argv)
        assert not options().tickets, argv
    monkeypatch.setattr("sys.argv", plain[0])
    monkeypatch.setenv("MMPREP_ENGINE_IPC", "1")  # asked for: also on a vLLM with its own way
    settings.cache_clear()
    assert options().tickets
    monkeypatch.setenv("MMPREP_ENGINE_IPC", "0")
    settings.cache_clear()
    assert not options().tickets
    monkeypatch.setenv("MMPREP_ENGINE_IPC", "maybe")
    settings.cache_clear()
    with pytest.raises(ValueError, match="MMPREP_ENGINE_IPC must be one of auto, 1, true, yes, on, 0, false, no, off"):
        settings()


def test_tickets_off_for_a_parallel_server_command_line(tiny, monkeypatch, fresh_settings):
    """DP/TP/PP > 1 would open one ticket in several processes or on a GPU the engine cannot see."""
    assert hook._parallel_flags(["vllm", "serve", "m", "--data-parallel-size", "4", "-tp=2"]) == "DP=4, TP=2"
    assert hook._parallel_flags(["vllm", "serve", "m", "--data-parallel-size", "1", "--port", "8000"]) == ""
    monkeypatch.setenv("MMPREP_ENGINE_IPC", "1")
    monkeypatch.setenv("MMPREP_PROCESSOR_DEVICE", "cuda")
    monkeypatch.setattr("sys.argv", ["vllm", "serve", "m", "--data-parallel-size=4"])
    assert not hook.options_for(model_config(tiny, dtype="bfloat16", mm_processor_cache_gb=0)).tickets


# ---------------------------------------------------------------- GPU: real shares, real processor
def _engine(conn) -> None:
    """Child: unpack the tickets it is sent (as the engine would) and report a checksum."""
    import torch

    from mmprep.vllm import handoff

    torch.cuda.init()
    while (msg := conn.recv()) is not None:
        tickets, grid = pickle.loads(msg)
        out = handoff.unpack(tickets.cuda(), grid)
        conn.send((tuple(out.shape), str(out.dtype), float(out.double().sum().item()), out[:2, :4].float().tolist()))
        del out


def _video_tickets(tiny, monkeypatch):
    """vLLM's processor with mmprep's pixels on the GPU, once as pixels and once as tickets."""
    monkeypatch.setenv("MMPREP_PROCESSOR_DEVICE", "cuda")
    cfg = model_config(tiny, dtype="bfloat16", mm_processor_cache_gb=0)
    _, mine = processors(cfg, "cuda")
    frames, meta = video_item(6, 240, 320, 5)
    data = {"video": [(torch.from_numpy(frames).cuda(), meta)]}
    pixels = apply(mine, PROMPT.format(VIDEO), data, path="mmprep")[1]
    mine.info._mmprep_opts = hook.PixelOptions(device="cuda", dtype=cfg.dtype, keep_on_device=False, tickets=True)
    ticketed = apply(mine, PROMPT.format(VIDEO), data, path="mmprep")[1]
    return pixels, ticketed


@pytest.mark.gpu
def test_gpu_tickets_open_in_the_engine_process_equal_to_pixels(tiny, monkeypatch, fresh_settings):
    pixels, ticketed = _video_tickets(tiny, monkeypatch)
    tickets, grid = ticketed["pixel_values_videos"], ticketed["video_grid_thw"]
    assert handoff.is_ticket(tickets) and not tickets.is_cuda and torch.equal(grid, pixels["video_grid_thw"])
    assert tickets.shape[0] == pixels["pixel_values_videos"].shape[0]
    assert handoff.pending_bytes() > 0
    want = pixels["pixel_values_videos"]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_engine, args=(child,), daemon=True)
    p.start()
    try:
        parent.send(pickle.dumps((tickets, grid)))
        shape, dtype, checksum, first = parent.recv()
    finally:
        parent.send(None)
        p.join(30)
    assert shape == tuple(want.shape) and dtype == str(want.dtype)
    assert checksum == float(want.double().sum()) and first == want[:2, :4].float().tolist()
    del ticketed, tickets
    assert _all_released(), (ipc.outstanding(), handoff.pending_bytes())


@pytest.mark.gpu
def test_gpu_tickets_opened_by_their_own_process(tiny, monkeypatch, fresh_settings):
    """The engine runs the processor itself for its memory profile, and batches that one dummy item several
    times: its own tickets must open, each once, however often they appear."""
    pixels, ticketed = _video_tickets(tiny, monkeypatch)
    t, g = ticketed["pixel_values_videos"], ticketed["video_grid_thw"]
    out = handoff.unpack(torch.cat([t, t, t]).cuda(), torch.cat([g, g, g]))
    want = pixels["pixel_values_videos"]
    assert torch.equal(out.cpu(), torch.cat([want, want, want]))
    del t
    del out, ticketed
    assert _all_released(), (ipc.outstanding(), handoff.pending_bytes())


def _all_released(timeout: float = 5.0) -> bool:
    """Every lease ended and every shared output freed (the engine's release thread frees after its copy)."""
    import gc
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if ipc.outstanding() == 0 and handoff.pending_bytes() == 0:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.gpu
def test_gpu_tickets_fall_back_to_pixels_over_the_limit(tiny, monkeypatch, fresh_settings):
    monkeypatch.setenv("MMPREP_ENGINE_IPC_GB", "0.000001")
    pixels, ticketed = _video_tickets(tiny, monkeypatch)
    assert not handoff.is_ticket(ticketed["pixel_values_videos"])
    assert torch.equal(ticketed["pixel_values_videos"], pixels["pixel_values_videos"])
