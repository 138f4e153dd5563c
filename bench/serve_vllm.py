"""Serving benchmark: a real ``vllm serve`` (dummy weights) per arm, video and image chat requests.

Arms (one server each, run one after another in one call):
  opencv   vLLM's default: OpenCV decode, PIL images, HF processor on the API server's CPU.
  mmprep   VLLM_VIDEO_LOADER_BACKEND=mmprep + VLLM_MEDIA_CONNECTOR=mmprep: NVDEC/nvJPEG decode and
           the processor's pixel work on the GPU (mmprep's processor hook, on by default with these); outputs
           reach the engine as mmprep's default says (MMPREP_ENGINE_IPC=auto: CUDA IPC tickets on 0.26 here).
  mmprep-host  the same with MMPREP_ENGINE_IPC=0: outputs through host memory and vLLM's socket.
  mmprep-workers  the same, decoding in ``mmprep.service`` worker processes (``MMPREP_WORKERS``).
  vllm-nvdec  vLLM's own GPU decoder (``--media-io-kwargs '{"video": {"backend": "pynvvideocodec"}}'``, 0.26
           and 0.32): PyNvVideoCodec decodes, frames go to pinned host memory, HF's processor runs on the CPU.
  mmprep-ipc  mmprep with MMPREP_ENGINE_IPC=1: processor outputs handed to the engine by CUDA IPC tickets
           instead of through host memory and vLLM's socket (vLLM versions that send no device tensors).
  ceiling  vLLM's default with the processor cache on: each clip is sent once with a uuid, then the
           timed requests send only the uuid, so no fetch, decode or processing runs; the engine still
           runs the vision encoder and the prefill. What the engine serves when media cost nothing.
           vLLM 0.26 refuses uuid-only items: there the timed requests send url + uuid, so the clip is
           still fetched and decoded with OpenCV on the CPU, but the processor's work comes from the
           cache. Images: two sets of 4 JPEGs cycled, processor outputs cached (PIL still decodes).
  ceiling-mmprep  media (almost) free on any vLLM: processor cache on, mmprep's loader with
           MMPREP_MEDIA_CACHE_MB (each clip decoded once, in the warm-up), identity digests as
           cache keys; a timed request reads the file, hashes it, and hits both caches; the engine
           still runs the vision encoder and the prefill. Images: nvJPEG still decodes.
Per server: video load (req/s; the steady rate, with the start and the drain left out; p50/p99, server-tree and API-server CPU-ms per request, GPU memory),
concurrency-1 latency (max_tokens=1: time to first token), an image load (4 JPEGs per request), bad
media (each must get HTTP 400 and the server keep serving), first-token logprobs of a PNG request.

    python3 bench/serve_vllm.py --model /tmp/qwen2vl2b --out $OUT/serve.json [-- <vllm serve flags>]
    python3 bench/serve_vllm.py report serve.json --md serve.md --png serve.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.util beside it

from bench.util import cpu_seconds  # noqa: E402


def with_free_box(mp4: bytes, tag: int) -> bytes:
    """``mp4`` plus a trailing ISO-BMFF ``free`` box holding ``tag``: other bytes (so another media hash in
    vLLM and mmprep), the same frames (demuxers skip ``free`` boxes)."""
    payload = tag.to_bytes(8, "big")
    return mp4 + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload


def with_comment(jpeg: bytes, tag: int) -> bytes:
    """``jpeg`` with a COM segment holding ``tag`` after SOI: other bytes, the same pixels (decoders skip it)."""
    payload = tag.to_bytes(8, "big")
    return jpeg[:2] + b"\xff\xfe" + (2 + len(payload)).to_bytes(2, "big") + payload + jpeg[2:]


def _copies(bases: list[Path], n: int, mark, name) -> list[Path]:
    """``n`` files, copy ``k`` made (once) as ``mark(bytes of bases[k % len(bases)], k)`` at ``name(k)``."""
    out = []
    for k in range(n):
        p = name(k)
        if not p.exists():
            p.write_bytes(mark(bases[k % len(bases)].read_bytes(), k))
        out.append(p)
    return out


def make_media(d: Path, clips: int, distinct: int | None = None) -> dict[str, list[Path]]:
    """10 s 1080p H.264 clips (frame counts differ), ``distinct`` byte-distinct copies of them that requests
    cycle through (default: the clips themselves), 1080p JPEGs (as many byte-distinct sets of 4, at most 64;
    else two sets), a PNG, bad files.

    Why copies: vLLM's encoder cache shares a vision-encoder output between requests whose item has the same
    hash, and in-flight requests hold entries. With few clips, requests that arrive together (a warm cache
    answers at once) share encoder runs, which the traffic being modelled would not; with more distinct
    items than requests in flight and entries the cache holds, no two requests share one."""
    from PIL import Image

    from mmprep.testing import make_video

    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {"video": [], "image": [], "png": [], "bad": []}
    base = []
    for i in range(clips):
        p = d / f"h264_1080p_gop250_{i}.mp4"
        if not p.exists():
            p.write_bytes(make_video(codec="h264", width=1920, height=1080, frames=300 - i, fps=30, gop=250,
                                     bframes=3, bitrate=5_000_000))
        base.append(p)
    out["video"] = (_copies(base, distinct, with_free_box, lambda k: d / f"h264_1080p_gop250_{k % clips}_v{k}.mp4")
                    if distinct is not None and distinct > clips else list(base))
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1080, 0:1920]
    base_images = []
    for i in range(8):
        p = d / f"img_{i}.jpg"
        if not p.exists():
            arr = np.stack([(x + 40 * i) % 256, (y + 20 * i) % 256, (x + y) % 256], -1) + rng.integers(0, 30, (1080, 1920, 3))
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        base_images.append(p)
    # Sets of 4 for as many requests as the video copies (at most 64).
    out["image"] = (_copies(base_images, 4 * min(distinct, 64), with_comment, lambda k: d / f"img_{k % 8}_v{k}.jpg")
                    if distinct is not None and distinct > 2 else list(base_images))
    p = d / "parity.png"
    arr = np.stack([x[:480, :640] % 256, y[:480, :640] % 256, (x[:480, :640] * 3) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(p)
    out["png"].append(p)
    good = base[0].read_bytes()
    for name, data in {"random.mp4": rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes(),
                       "truncated.mp4": good[: len(good) // 50], "empty.mp4": b"",
                       "garbled.mp4": good[:4096] + rng.integers(0, 256, len(good) - 4096, dtype=np.uint8).tobytes()}.items():
        (d / name).write_bytes(data)
        out["bad"].append(d / name)
    return out


def cpu_split(pid: int) -> tuple[float, float, dict[str, float]]:
    """CPU seconds of the whole server process tree, of the API-server process(es), and per process name."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0.0, {}
    api = [p for p in tree if "APIServer" in " ".join(_name(p))] or [root]
    by_name: dict[str, float] = {}
    for p in tree:
        key = (_name(p) or ["?"])[0]
        by_name[key] = by_name.get(key, 0.0) + cpu_seconds([p])
    return cpu_seconds(tree), cpu_seconds(api), by_name


def cpu_per_req(before: tuple, after: tuple, ok: int) -> dict:
    """Server CPU-ms per answered request between two ``cpu_split`` readings: tree, API server, by process."""
    n = max(ok, 1)
    return {"server_cpu_ms_per_req": (after[0] - before[0]) * 1000 / n,
            "api_server_cpu_ms_per_req": (after[1] - before[1]) * 1000 / n,
            "cpu_ms_per_req_by_process": {k: round((v - before[2].get(k, 0.0)) * 1000 / n, 1)
                                          for k, v in after[2].items()}}


def _name(p) -> list[str]:
    try:
        return [p.name()] + p.cmdline()[:1]
    except Exception:  # noqa: BLE001
        return []


def gpu_mem_mib() -> list[int]:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []


class GpuUtil:
    """Mean SM and NVDEC utilization per GPU while a load runs (``nvidia-smi`` every 0.5 s)."""

    def __enter__(self) -> "GpuUtil":
        self.result: dict[str, list[float]] = {}
        try:
            self._p = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,utilization.decoder",
                                        "--format=csv,noheader,nounits", "-lms", "500"],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._p = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is None:
            return
        self._p.terminate()
        out, _ = self._p.communicate(timeout=10)
        sm: dict[int, list[float]] = {}
        dec: dict[int, list[float]] = {}
        for line in out.splitlines():
            try:
                i, g, d = (float(x) for x in line.split(","))
            except ValueError:
                continue
            sm.setdefault(int(i), []).append(g)
            dec.setdefault(int(i), []).append(d)
        self.result = {"sm_util_pct": [round(statistics.mean(v), 1) for _, v in sorted(sm.items())],
                       "nvdec_util_pct": [round(statistics.mean(v), 1) for _, v in sorted(dec.items())]}


def measured(url: str, bodies: list[list[dict]], conc: int, pid: int) -> dict:
    """``load`` with the server's CPU per request and the GPUs' utilization during it."""
    cpu0 = cpu_split(pid)
    with GpuUtil() as util:
        r = asyncio.run(load(url, bodies, conc))
    r.update(cpu_per_req(cpu0, cpu_split(pid), r["ok"]))
    r.update(util.result)
    return r


def stop(proc: subprocess.Popen) -> None:
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import aiohttp

    t0 = time.time()
    async with aiohttp.ClientSession() as s:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
            try:
                async with s.get(url + "/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001
                pass
            await asyncio.sleep(2)
    raise TimeoutError(f"server not ready after {timeout} s")


def video_part(path: Path | None, uuid: str | None = None) -> dict:
    part: dict = {"type": "video_url", "video_url": {"url": path.resolve().as_uri() if path else ""}}
    if uuid:
        part["uuid"] = uuid
    return part


def image_part(path: Path) -> dict:
    return {"type": "image_url", "image_url": {"url": path.resolve().as_uri()}}


def steady_rate(done: list[float], conc: int) -> float | None:
    """Completions per second between the ``conc``-th and the ``conc``-th-from-last: the rate with every slot
    busy, without the start (the first requests' media work with an idle engine) or the drain; None when the run
    is too short to have such a window (fewer than 2 * conc + 2 completions)."""
    if len(done) < 2 * conc + 2:
        return None
    done = sorted(done)
    a, b = done[conc - 1], done[-conc - 1]
    return (len(done) - 2 * conc) / (b - a) if b > a else None


async def load(url: str, bodies: list[list[dict]], conc: int, extra: dict | None = None) -> dict:
    """Send one chat request per content list at ``conc`` concurrency; latency, status counts."""
    import aiohttp

    sem = asyncio.Semaphore(conc)
    lat: list[float] = []
    toks: list[int] = []
    errors: list[str] = []
    statuses: dict[str, int] = {}
    first: list = []
    done: list[float] = []

    async def one(s, content):
        body = {"model": "m", "max_tokens": 1, "temperature": 0.0, **(extra or {}),
                "messages": [{"role": "user", "content": content + [{"type": "text", "text": "Describe this."}]}]}
        async with sem:
            t = time.perf_counter()
            try:
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    txt = await r.text()
                    statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                    if r.status != 200:
                        errors.append(f"{r.status}: {txt[:240]}")
                        return
                    js = json.loads(txt)
                    toks.append(js["usage"]["prompt_tokens"])
                    first.append(js["choices"][0].get("logprobs"))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e)[:240])
                return
            lat.append(time.perf_counter() - t)
            done.append(time.perf_counter())

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s, c) for c in bodies))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"n": len(bodies), "ok": len(lat), "statuses": statuses, "errors": errors[:6], "wall_s": wall,
            "req_per_s": len(lat) / wall if wall else 0.0, "steady_req_per_s": steady_rate(done, conc),
            "p50_s": statistics.median(lat) if lat else None,
            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "prompt_tokens_mean": statistics.mean(toks) if toks else None, "logprobs": first[:1]}


def server_cmd(a, arm: str) -> tuple[list[str], dict]:
    env = dict(os.environ)
    for k in ("VLLM_VIDEO_LOADER_BACKEND", "VLLM_MEDIA_CONNECTOR", "MMPREP_PROCESSOR", "MMPREP_ENGINE_IPC"):
        env.pop(k, None)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    if a.gpus:
        env["CUDA_VISIBLE_DEVICES"] = a.gpus
    cache = str(max(8, a.video_files // 10 + 1)) if arm.startswith("ceiling") else "0"  # ~63 MB per clip
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", a.model, "--load-format", "dummy",
           "--served-model-name", "m", "--port", str(a.port), "--dtype", "bfloat16", "--seed", "0",
           "--max-model-len", str(a.max_model_len), "--max-num-seqs", str(a.max_num_seqs),
           "--gpu-memory-utilization", str(a.gpu_mem), "--limit-mm-per-prompt", json.dumps({"video": 1, "image": 4}),
           "--allowed-local-media-path", str(a.media_dir.resolve()), "--mm-processor-cache-gb", cache,
           "--no-enable-prefix-caching", "--max-logprobs", "5"]
    if a.enforce_eager:
        cmd.append("--enforce-eager")
    if arm.startswith("mmprep") or arm == "ceiling-mmprep":
        env["VLLM_VIDEO_LOADER_BACKEND"] = "mmprep"
        env["VLLM_MEDIA_CONNECTOR"] = "mmprep"
        cmd += ["--media-io-kwargs", json.dumps({"video": {"device": a.decode_device}})]
    if arm == "vllm-nvdec":  # vLLM's own GPU decoder (0.26 and 0.32): frames to the host, HF processor on the CPU
        cmd += ["--media-io-kwargs", json.dumps({"video": {"backend": "pynvvideocodec"}})]
    if arm == "mmprep-ipc":
        env["MMPREP_ENGINE_IPC"] = "1"
    if arm == "mmprep-host":
        env["MMPREP_ENGINE_IPC"] = "0"
    if arm == "mmprep-workers":
        env["MMPREP_WORKERS"] = str(a.workers)
        # DP>1: every API server attaches to one service. Its own socket per arm: a service that an earlier arm
        # started (with other visible GPUs) lives on for a minute after its server, and would be attached to.
        env["MMPREP_SERVICE"] = f"/tmp/mmprep-bench{a.tag}-{a.port}.sock"
    if arm == "ceiling-mmprep":
        env["MMPREP_MEDIA_CACHE_MB"] = str(160 * a.video_files + 1024)  # every clip's frames (~124 MB each)
    return cmd + a.extra, env


def run_arm(arm: str, a, media: dict[str, list[Path]]) -> dict:
    cmd, env = server_cmd(a, arm)
    log_path = Path(a.log_dir) / f"server_{arm}{a.tag}.log"
    url = f"http://127.0.0.1:{a.port}"
    print(f"[{arm}] {' '.join(cmd)}", flush=True)
    res: dict = {"arm": arm, "tag": a.tag, "server_args": cmd[cmd.index("serve") + 2:],
                 "server_env": {k: v for k, v in env.items()
                                if k.startswith(("MMPREP_", "VLLM_VIDEO", "VLLM_MEDIA", "OMP_", "CUDA_VISIBLE"))}}
    vids, imgs = media["video"], media["image"]
    with open(log_path, "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            asyncio.run(wait_ready(url, proc, a.ready_timeout))
            res["ready_s"] = time.time() - t0
            print(f"[{arm}] ready in {res['ready_s']:.0f} s", flush=True)
            if arm == "ceiling":
                warm = [[video_part(v, uuid=f"clip-{i}")] for i, v in enumerate(vids)]
                asyncio.run(load(url, warm, len(warm)))
                timed = [[video_part(None, uuid=f"clip-{i % len(vids)}")] for i in range(a.requests)]
            else:  # the ceiling's warm-up sends every clip once: its timed requests all hit the caches
                warm = max(a.warmup, len(vids)) if arm.startswith("ceiling") else a.warmup
                asyncio.run(load(url, [[video_part(vids[i % len(vids)])] for i in range(warm)], a.concurrency))
                timed = [[video_part(vids[i % len(vids)])] for i in range(a.requests)]
            r = measured(url, timed, a.concurrency, proc.pid)
            if arm == "ceiling" and r["ok"] == 0:  # this vLLM wants the URL with the uuid: cache hits still skip processing
                res["ceiling_note"] = f"uuid-only refused ({r['errors'][:1]}); timed with url+uuid"
                timed = [[video_part(vids[i % len(vids)], uuid=f"clip-{i % len(vids)}")] for i in range(a.requests)]
                r = measured(url, timed, a.concurrency, proc.pid)
            r["gpu_mem_mib"] = gpu_mem_mib()
            res["video"] = r
            print(f"[{arm}] video {json.dumps({k: v for k, v in r.items() if k != 'logprobs'})}", flush=True)
            if not arm.startswith("ceiling"):
                one = [[video_part(vids[i % len(vids)])] for i in range(a.ttft_requests)]
                res["video_c1"] = asyncio.run(load(url, one, 1))
                print(f"[{arm}] c1 p50 {res['video_c1']['p50_s']}", flush=True)
            # Images: 4 per request, the sets of 4 cycled (the ceiling's warm-up puts every set in its cache).
            bodies = [[image_part(imgs[(4 * i + j) % len(imgs)]) for j in range(4)] for i in range(a.image_requests)]
            sets = [[image_part(imgs[4 * k + j]) for j in range(4)] for k in range(len(imgs) // 4)]
            asyncio.run(load(url, sets if arm.startswith("ceiling") else bodies[:4], a.concurrency))
            r = measured(url, bodies, a.concurrency, proc.pid)
            res["image"] = r
            print(f"[{arm}] image {r['req_per_s']:.2f} req/s", flush=True)
            if not arm.startswith("ceiling"):
                bad = [[video_part(p)] for p in media["bad"]] + [[video_part(vids[0])]] * 2  # a mix: 4 bad, 2 good
                res["bad_media"] = asyncio.run(load(url, bad, 4))
                print(f"[{arm}] bad media statuses {res['bad_media']['statuses']}", flush=True)
                res["png_logprobs"] = asyncio.run(load(url, [[image_part(media["png"][0])]], 1,
                                                       {"logprobs": True, "top_logprobs": 5}))["logprobs"]
        except Exception as e:  # noqa: BLE001
            res["failed"] = repr(e)
            print(f"[{arm}] FAILED {e!r}; server log tail:", flush=True)
            log.flush()
            print("".join(open(log_path).readlines()[-50:]), flush=True)
        finally:
            stop(proc)
    return res


def _util(r: dict) -> str:
    sm, dec = r.get("sm_util_pct"), r.get("nvdec_util_pct")
    return " ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(sm, dec)) if sm else "–"


def _failure(r: dict) -> str | None:
    """Why an arm has no figures: it crashed, or every timed video request failed (with the first error)."""
    if "failed" in r:
        return r["failed"]
    v = r.get("video", {})
    return None if v.get("ok") else f"no video request succeeded: {(v.get('errors') or ['?'])[0]}"


def _steady(v: dict) -> str:
    return f" ({v['steady_req_per_s']:.2f})" if v.get("steady_req_per_s") else ""  # (results before it had none)


def table(results: list[dict]) -> str:
    rows = ["| arm | video req/s (steady) | p50 / p99 s | c=1 latency s | server CPU-ms/req (API server) | GPU MiB | "
            "GPU SM% / NVDEC% (video) | image req/s | bad media |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if why := _failure(r):
            rows.append(f"| {r['arm']}{r['tag']} | FAILED: {why[:160]} |")
            continue
        v, c1, im, bad = r["video"], r.get("video_c1", {}), r.get("image", {}), r.get("bad_media", {})
        c1_s = f"{c1['p50_s']:.2f}" if c1.get("p50_s") else "–"  # the ceiling arms measure no c=1 latency
        rows.append(
            f"| {r['arm']}{r['tag']} | {v['req_per_s']:.2f}{_steady(v)} | {v['p50_s']:.2f} / {v['p99_s']:.2f} | "
            f"{c1_s} | {v['server_cpu_ms_per_req']:.0f} ({v['api_server_cpu_ms_per_req']:.0f}) | "
            f"{max(v['gpu_mem_mib'] or [0])} | {_util(v)} | {im.get('req_per_s', 0):.2f} | {bad.get('statuses', '')} |")
    return "\n".join(rows)


def plot(results: list[dict], path: str, title: str) -> None:
    """Bar chart per arm: video and image req/s, and the server's CPU-ms per video request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if not _failure(r)]
    names = [r["arm"] + r["tag"] for r in ok]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(ok))
    ax1.bar([i - 0.2 for i in x], [r["video"]["req_per_s"] for r in ok], 0.4, label="video (10 s 1080p)")
    ax1.bar([i + 0.2 for i in x], [r.get("image", {}).get("req_per_s", 0) for r in ok], 0.4, label="images (4 x 1080p)")
    ax1.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("requests/s")
    ax1.legend()
    api = [r["video"]["api_server_cpu_ms_per_req"] for r in ok]
    rest = [r["video"]["server_cpu_ms_per_req"] - a for r, a in zip(ok, api)]
    ax2.bar(list(x), api, label="API server")
    ax2.bar(list(x), rest, bottom=api, label="engine and other processes")
    ax2.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("server CPU-ms per video request")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(json_path: str, md_path: str | None, png_path: str | None) -> None:
    """Markdown table (and a plot) from a results JSON: a list of arms, or {"meta": ..., "results": [...]}."""
    d = json.loads(Path(json_path).read_text())
    meta, results = (d.get("meta", {}), d["results"]) if isinstance(d, dict) else ({}, d)
    head = f"# vLLM serving, {meta.get('date', '?')}, {meta.get('device', '?')}, vLLM {meta.get('vllm', '?')}\n\n"
    text = head + (meta.get("workload", "") + "\n\n" if meta else "") + table(results) + "\n"
    if md_path:
        Path(md_path).write_text(text)
    if png_path:
        plot(results, png_path, f"vLLM {meta.get('vllm', '?')} serving, {meta.get('device', '?')}")
    print(text)


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        rp = argparse.ArgumentParser(description="table and plot from a results JSON")
        rp.add_argument("json")
        rp.add_argument("--md")
        rp.add_argument("--png")
        r = rp.parse_args(sys.argv[2:])
        return report(r.json, r.md, r.png)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--arms", default="ceiling,opencv,mmprep")
    ap.add_argument("--tag", default="", help="suffix for this layout in names and the table, e.g. _dp4")
    ap.add_argument("--gpus", default=None, help="CUDA_VISIBLE_DEVICES for the servers, e.g. 0")
    ap.add_argument("--media-dir", type=Path, default=Path("/tmp/vbench"))
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--distinct", type=int, default=None,
                    help="byte-distinct video files the requests cycle through (default: 2 x concurrency + 4, so no "
                         "two requests in flight share a vision-encoder run; 0: the clips themselves)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--ttft-requests", type=int, default=6)
    ap.add_argument("--image-requests", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--gpu-mem", type=float, default=0.7)
    ap.add_argument("--decode-device", default="auto")
    ap.add_argument("--workers", type=int, default=1, help="MMPREP_WORKERS (per GPU) for the mmprep-workers arm")
    ap.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--ready-timeout", type=float, default=420)
    ap.add_argument("--log-dir", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--out", default=None, help="JSON file for the results (appended to when it exists)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `vllm serve` arguments")
    a = ap.parse_args()
    a.extra = [x for x in a.extra if x != "--"]
    distinct = 2 * a.concurrency + 4 if a.distinct is None else a.distinct
    media = make_media(a.media_dir, a.clips, distinct or None)
    a.video_files = len(media["video"])
    results = []
    for arm in a.arms.split(","):
        results.append(run_arm(arm, a, media))
        if a.out:  # after every arm: a call cut short keeps what it measured
            p = Path(a.out)
            old = json.loads(p.read_text()) if p.exists() else []
            p.write_text(json.dumps(old + results[-1:], indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
