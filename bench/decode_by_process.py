"""Is H.264's slower decode in a service worker the worker, any second process, or reading from shared memory?
Decodes one clip on GPU 0 in this process and in a plain spawned child, each from bytes and from a shared-memory view,
taking turns; with a third argument the child opens its NVDEC sessions first.

    python3 bench/decode_by_process.py h264_1080p_gop250 11 [first]    # prints one JSON line of median ms

Run from the repository root.
"""
import json, sys
import multiprocessing as mp

sys.path.insert(0, "bench")


def child(conn, shm_name, size, idx):
    import torch, mmprep
    from multiprocessing.shared_memory import SharedMemory
    from util import wall_ms
    seg = SharedMemory(name=shm_name)
    view = seg.buf[:size]
    data = bytes(view)
    torch.cuda.set_device(0)
    while True:
        kind = conn.recv()
        if kind is None:
            break
        src = data if kind == "bytes" else view
        conn.send(wall_ms(lambda: mmprep.decode_video(src, indices=idx, device="cuda:0")))
    del view
    seg.close()


def main():
    import mmprep
    from multiprocessing.shared_memory import SharedMemory
    from media import clip_path
    from util import median, sample32_of, wall_ms
    clip, n = sys.argv[1], int(sys.argv[2])
    data = clip_path(clip).read_bytes()
    idx = sample32_of(data)
    seg = SharedMemory(create=True, size=len(data))
    seg.buf[:len(data)] = data
    view = seg.buf[:len(data)]
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=child, args=(b, seg.name, len(data), idx), daemon=True)
    p.start()

    def here(src):
        return wall_ms(lambda: mmprep.decode_video(src, indices=idx, device="cuda:0"))

    def there(kind):
        a.send(kind); return a.recv()

    arms = {"here_bytes": lambda: here(data), "here_view": lambda: here(view),
            "child_bytes": lambda: there("bytes"), "child_view": lambda: there("view")}
    if len(sys.argv) > 3:  # the child opens its NVDEC sessions first
        there("bytes"); there("bytes"); there("view")
    for f in arms.values():
        f(); f()
    times = {k: [] for k in arms}
    for _ in range(n):
        for k, f in arms.items():
            times[k].append(f())
    a.send(None); p.join(10)
    print(json.dumps({"clip": clip, "child_first": len(sys.argv) > 3, **{k: median(v, 2) for k, v in times.items()}}), flush=True)
    del view
    seg.close(); seg.unlink()


if __name__ == "__main__":
    main()
