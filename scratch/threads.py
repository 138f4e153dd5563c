"""Experiment: concurrent requests (threads) doing nvJPEG decode + fused preprocess; decode chunk costs."""
import io, time, json, threading
import torch, mmprep
from mmprep.testing import synthetic_frame
from mmprep.kernels import fused
from PIL import Image
fused(wait=True)
def jpg(i):
    b = io.BytesIO(); Image.fromarray(synthetic_frame(i, 1920, 1080)).save(b, "JPEG", quality=90); return b.getvalue()
jp = [jpg(i) for i in range(64)]
for n in (8, 16, 32, 64):
    for _ in range(3): mmprep.decode_images(jp[:n], device="cuda")
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(10): mmprep.decode_images(jp[:n], device="cuda")
    torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / 10
    print(json.dumps({"decode_n": n, "ms": round(dt * 1e3, 2), "img_s": round(n / dt)}), flush=True)
def work(rounds, batch):
    for _ in range(rounds):
        mmprep.preprocess(images=mmprep.decode_images(jp[:batch], device="cuda"), device="cuda")
    torch.cuda.current_stream().synchronize()
for batch in (32, 64):
    for nt in (1, 2, 3, 4):
        work(2, batch); torch.cuda.synchronize()
        rounds = 12
        ths = [threading.Thread(target=work, args=(rounds, batch)) for _ in range(nt)]
        t0 = time.perf_counter(); c0 = time.process_time()
        [t.start() for t in ths]; [t.join() for t in ths]
        torch.cuda.synchronize(); dt = time.perf_counter() - t0
        print(json.dumps({"batch": batch, "threads": nt, "img_s": round(nt * rounds * batch / dt), "cpu_ms_per_img": round((time.process_time() - c0) * 1e3 / (nt * rounds * batch), 3)}), flush=True)
