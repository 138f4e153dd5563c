"""Experiment: overlap nvJPEG decode of chunk k+1 with the fused kernel on chunk k."""
import io, time, resource, json, os, sys
import torch
import mmprep
from mmprep.testing import synthetic_frame
from mmprep.kernels import fused
from PIL import Image

fused(wait=True)
def jpg(i):
    b = io.BytesIO(); Image.fromarray(synthetic_frame(i, 1920, 1080)).save(b, "JPEG", quality=90); return b.getvalue()
jp = [jpg(i) for i in range(64)]

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

def timeit(name, fn, n=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), cpu_s()
    for _ in range(n): fn()
    torch.cuda.synchronize()
    dt, dc = (time.perf_counter() - t0) / n, (cpu_s() - c0) / n
    print(json.dumps({"case": name, "ms": round(dt * 1e3, 2), "img_s": round(64 / dt), "cpu_ms": round(dc * 1e3, 2)}), flush=True)

def base():
    return mmprep.preprocess(images=mmprep.decode_images(jp, device="cuda"), device="cuda")

def decode_only():
    return mmprep.decode_images(jp, device="cuda")

def chunked(c, own_stream=False):
    s = torch.cuda.Stream() if own_stream else None
    def f():
        outs = []
        cur = torch.cuda.current_stream()
        for k in range(0, 64, c):
            if s is not None:
                with torch.cuda.stream(s):
                    imgs = mmprep.decode_images(jp[k:k + c], device="cuda")
                cur.wait_stream(s)
                for x in imgs: x.record_stream(cur)
            else:
                imgs = mmprep.decode_images(jp[k:k + c], device="cuda")
            outs.append(mmprep.preprocess(images=imgs, device="cuda"))
        return torch.cat([o["pixel_values"] for o in outs]), torch.cat([o["image_grid_thw"] for o in outs])
    return f

def prep_only():
    imgs = mmprep.decode_images(jp, device="cuda"); torch.cuda.synchronize()
    return lambda: mmprep.preprocess(images=imgs, device="cuda")

timeit("base", base)
timeit("decode_only", decode_only)
timeit("prep_only", prep_only())
for c in (8, 16, 32):
    timeit(f"chunk{c}", chunked(c))
    timeit(f"chunk{c}_stream", chunked(c, True))
# check equality
a = base(); b = chunked(16)()
print("equal", torch.equal(a["pixel_values"], b[0]), torch.equal(a["image_grid_thw"], b[1]))
# profile where the decode time goes
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    base(); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
