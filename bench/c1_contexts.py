"""Is c=1 decode slower in whichever process made its CUDA context on the GPU second? Two spawned processes A and B
(this process never touches CUDA) each decode + Qwen2-VL preprocess one clip in-process on GPU 0, one request at a
time, taking turns in blocks (the other idle); then A exits and B runs alone; then a third process C starts and B
and C take turns. Prints the median ms of each block, as one JSON line.

    python3 bench/c1_contexts.py h264_1080p_gop250 11    # clip (bench/media.py), requests per block

Run from the repository root.
"""
import json, statistics, sys, time
import multiprocessing as mp

sys.path.insert(0, "bench")


def proc(conn, clip):
    """Child: warm up, then answer ("run", n) with the median ms of n requests, until ("quit",)."""
    import torch
    from media import clip_path
    from util import decode_preprocess, sample32_of

    data = clip_path(clip).read_bytes()
    idx = sample32_of(data)
    for _ in range(3):
        decode_preprocess(data, idx, "cuda:0")
    torch.cuda.synchronize()
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg[0] == "quit":
            return
        ms = []
        for _ in range(msg[1]):
            t = time.perf_counter()
            decode_preprocess(data, idx, "cuda:0")
            torch.cuda.synchronize()
            ms.append(1000 * (time.perf_counter() - t))
        conn.send(round(statistics.median(ms), 1))


def start(ctx, clip):
    here, there = ctx.Pipe()
    p = ctx.Process(target=proc, args=(there, clip), daemon=True)
    p.start()
    assert here.recv() == "ready"
    return p, here


def main():
    clip, n = sys.argv[1], int(sys.argv[2])
    from media import clip_path
    clip_path(clip)  # make the clip once, before the children race to
    ctx = mp.get_context("spawn")
    procs = {}
    out = {"clip": clip, "blocks": []}

    def block(name):
        procs[name][1].send(("run", n))
        out["blocks"].append([name, procs[name][1].recv()])

    procs["A"] = start(ctx, clip)
    procs["B"] = start(ctx, clip)
    for name in "ABABAB":
        block(name)
    procs["A"][1].send(("quit",)); procs["A"][0].join()
    for _ in range(2):
        block("B")
    procs["C"] = start(ctx, clip)
    for name in "BCBCBC":
        block(name)
    for name in "BC":
        procs[name][1].send(("quit",)); procs[name][0].join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
